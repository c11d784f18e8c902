// graph.cu - captured training steps (CUDA graphs): capture_begin/capture_end record one step's
// work on the compute stream (and, through the events a device communicator uses to fork and
// join its own stream, the gradient all-reduces), replay launches the recording.
//
// What varies between steps is not frozen into the graph. The rule (cuda_common.h): every
// kernel that uses a step variable reads it from device memory, eager or captured: the epoch,
// the dropout step and the Adam coefficients from c->d_vars (dev_vars), the ids from the buffer
// prep_batch was given. In an eager step each launcher stages its field into d_vars just before
// its kernel (cuda_stage, which records nothing during a capture), and prep_batch copies the
// ids; during a capture prep_batch only records where the ids go. So replay provides both:
// it writes the step's dev_vars and ids into one of two page-locked slots, copies them to the
// device on the stream and launches the graph behind the copies. A slot is refilled only after
// the copies that last read it have run (an event per slot), so the host may run a step ahead
// without waiting. Eager work queued between replays (evaluation, the short last batch) stages
// its own values behind the graph in stream order; the next replay copies all of dev_vars again.
//
// An invalid label met by the captured cross-entropy is recorded in host memory by the kernel
// (loss.cu); replay and graph_free report it (FATAL) once a replay that met it has run.
//
// Capture mode is thread-local: the NCCL watchdog thread keeps polling events meanwhile.
// A graph holds the addresses of every buffer it was captured with: the workspaces are retired
// rather than freed while a graph lives (backend_cuda.cu, grow), and a graph that holds NCCL
// work must be freed before its communicator is destroyed (net_release_graph).
#include <string.h>

#include "cuda_common.h"

typedef struct cuda_graph {
  cudaGraphExec_t exec;
  int32_t *ids_dst; // where prep_batch read the batch's ids (device)
  int n;            // the captured batch
  dev_vars *h_vars;   // page-locked: 2 slots
  int32_t *h_ids;     // page-locked: 2 slots of n ids
  cudaEvent_t copied[2];
  int slot;
} cuda_graph;

void cuda_capture_begin(backend *b) {
  cuda_ctx *c = ctx_of(b);
  if (c->capturing) FATAL("CUDA graph capture begun twice");
  if (c->prof) // the profiled ops table has no capture entries; this is a caller holding the old one
    FATAL("CUDA graph capture while the per-op profiler is on: the two are exclusive (profile "
          "eager steps)");
  cuda_xent_prepare(c); // allocates: not allowed once the capture has begun
  cudaCheck(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
  c->capturing = 1;
  c->cap_ids = NULL;
  c->cap_n = 0;
  c->cap_preps = 0;
}

void *cuda_capture_end(backend *b) {
  cuda_ctx *c = ctx_of(b);
  if (!c->capturing) FATAL("CUDA graph capture ended without being begun");
  cudaGraph_t g = NULL;
  cudaError_t e = cudaStreamEndCapture(c->stream, &g);
  c->capturing = 0;
  if (e != cudaSuccess)
    FATAL("capturing the training step as a CUDA graph failed: %s (run with --cuda-graphs 0)",
          cudaGetErrorString(e));
  cuda_graph *G = (cuda_graph *)xcalloc(1, sizeof(cuda_graph));
  cudaCheck(cudaGraphInstantiate(&G->exec, g, 0));
  cudaCheck(cudaGraphDestroy(g));
  G->ids_dst = c->cap_ids;
  G->n = c->cap_n;
  cudaCheck(cudaMallocHost((void **)&G->h_vars, 2 * sizeof(dev_vars)));
  if (G->n) cudaCheck(cudaMallocHost((void **)&G->h_ids, 2 * (size_t)G->n * sizeof(int32_t)));
  for (int s = 0; s < 2; s++) cudaCheck(cudaEventCreateWithFlags(&G->copied[s], cudaEventDisableTiming));
  cudaCheck(cudaGraphUpload(G->exec, c->stream)); // the first replay need not pay for it
  c->graphs_live++;
  return G;
}

void cuda_replay(backend *b, void *graph, const step_vars *v) {
  cuda_ctx *c = ctx_of(b);
  cuda_graph *G = (cuda_graph *)graph;
  if (v->n != G->n)
    FATAL("replaying a training step captured for %d images with %d", G->n, v->n);
  int s = G->slot;
  G->slot ^= 1;
  cudaCheck(cudaEventSynchronize(G->copied[s])); // the copies that last read slot s have run
  cuda_xent_check(c); // an invalid label met by an earlier replay (or eager step) that has run
  G->h_vars[s].adam = adam_plan(&v->adam);
  G->h_vars[s].epoch = v->epoch;
  G->h_vars[s].step = v->step;
  cudaCheck(cudaMemcpyAsync(c->d_vars, &G->h_vars[s], sizeof(dev_vars), cudaMemcpyHostToDevice,
                            c->stream));
  if (G->n) {
    int32_t *slot_ids = G->h_ids + (size_t)s * G->n;
    memcpy(slot_ids, v->h_ids, (size_t)G->n * sizeof(int32_t));
    cudaCheck(cudaMemcpyAsync(G->ids_dst, slot_ids, (size_t)G->n * sizeof(int32_t),
                              cudaMemcpyHostToDevice, c->stream));
  }
  cudaCheck(cudaEventRecord(G->copied[s], c->stream));
  cudaCheck(cudaGraphLaunch(G->exec, c->stream));
}

void cuda_graph_free(backend *b, void *graph) {
  cuda_graph *G = (cuda_graph *)graph;
  if (!G) return;
  cudaCheck(cudaStreamSynchronize(ctx_of(b)->stream)); // a replay may still be running
  cuda_xent_check(ctx_of(b)); // every replay has run: the last ones' labels are checked too
  for (int s = 1; s >= 0; s--) cudaCheck(cudaEventDestroy(G->copied[s]));
  if (G->h_ids) cudaCheck(cudaFreeHost(G->h_ids));
  cudaCheck(cudaFreeHost(G->h_vars));
  cudaCheck(cudaGraphExecDestroy(G->exec));
  free(G);
  cuda_ctx *c = ctx_of(b);
  if (--c->graphs_live == 0) cuda_free_retired(c);
}
