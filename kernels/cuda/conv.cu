// conv.cu - 3x3 / pad 1 / stride 1 convolutions through the cuDNN 9 backend (graph) API, NHWC
// activations and KRSC filters (cuDNN's NHWC filter format), plus the bias + activation
// epilogue (fused into conv_fwd, keyed by the activation) and the bias gradient, a column sum
// that only reads dy, from elementwise.cu. conv_bwd never writes dy: the activation's backward
// is the walker's act_bwd, run before it into a buffer of its own.
//
// Per distinct (op, op_shape, precision, byte alignment of x, w and y, each declared on
// its own tensor) we build, once, an operation graph of one convolution node, ask the
// heuristics (mode A, then FALLBACK) for engine configs, drop the engines the precision forbids
// (fp32: any tensor-core/TF32 or down-converting engine), finalize up to CONV_CANDIDATES
// execution plans and keep one (autotune mode fastest: each timed on the live buffers, the
// fastest kept; first: the first that runs, untimed). The chosen plan and every descriptor it
// was built from live in the plan cache until destroy.
//
// Why not the fused conv+bias+ReLU graph: cuDNN only has runtime-fusion engines for that
// pattern, mostly tensor-core only, so fp32 would need the unfused path anyway; without a GPU
// to verify the fused variant pack, the epilogue is our own one-pass kernel (cuda_bias_act).
#include <string.h>

#include "cuda_common.h"
#include "log.h"

typedef cudnnBackendDescriptor_t bdesc;

#define CONV_CANDIDATES 3                     // plans timed at first use
#define CONV_MAX_WORKSPACE ((int64_t)1 << 30) // engines wanting more are skipped
#define CONV_KEEP 16

enum { UID_X = 1, UID_W = 2, UID_Y = 3 }; // x-shaped, filter-shaped, y-shaped tensor

typedef struct conv_plan {
  bdesc plan;
  int64_t workspace;
  bdesc keep[CONV_KEEP]; // what the plan was built from; destroyed with it
  int nkeep;
} conv_plan;

static bdesc desc_create(cudnnBackendDescriptorType_t t) {
  bdesc d;
  cudnnCheck(cudnnBackendCreateDescriptor(t, &d));
  return d;
}

static void keep(conv_plan *p, bdesc d) {
  if (p->nkeep == CONV_KEEP) FATAL("conv plan: too many descriptors");
  p->keep[p->nkeep++] = d;
}

void cuda_conv_plan_free(void *v, void *arg) {
  conv_plan *p = (conv_plan *)v;
  if (!p) return;
  if (p->plan) cudnnCheck(cudnnBackendDestroyDescriptor(p->plan));
  for (int i = p->nkeep - 1; i >= 0; i--) cudnnCheck(cudnnBackendDestroyDescriptor(p->keep[i]));
  free(p);
}

// Dimensions are always given in (N, C, H, W) order; the strides make the layout NHWC.
static bdesc tensor_nhwc(int64_t uid, cudnnDataType_t dt, int64_t n, int64_t c, int64_t h,
                         int64_t w, int64_t align) {
  int64_t dims[4] = {n, c, h, w};
  int64_t strides[4] = {h * w * c, 1, w * c, c};
  bdesc t = desc_create(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  cudnnCheck(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt));
  cudnnCheck(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims));
  cudnnCheck(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides));
  cudnnCheck(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid));
  cudnnCheck(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align));
  cudnnCheck(cudnnBackendFinalize(t));
  return t;
}

static bdesc conv_desc(void) {
  int64_t spatial = 2, pad[2] = {1, 1}, stride[2] = {1, 1}, dil[2] = {1, 1};
  cudnnDataType_t comp = CUDNN_DATA_FLOAT; // fp32 accumulation in every precision
  cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  bdesc d = desc_create(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
  cudnnCheck(cudnnBackendSetAttribute(d, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &spatial));
  cudnnCheck(cudnnBackendSetAttribute(d, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp));
  cudnnCheck(cudnnBackendSetAttribute(d, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode));
  cudnnCheck(cudnnBackendSetAttribute(d, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pad));
  cudnnCheck(cudnnBackendSetAttribute(d, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, pad));
  cudnnCheck(cudnnBackendSetAttribute(d, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, stride));
  cudnnCheck(cudnnBackendSetAttribute(d, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dil));
  cudnnCheck(cudnnBackendFinalize(d));
  return d;
}

// The one-node operation for op, wired to the three tensors.
static bdesc conv_operation(int op, bdesc tx, bdesc tw, bdesc ty, bdesc cd) {
  float alpha = 1.0f, beta = 0.0f; // outputs are written, never accumulated
  cudnnBackendDescriptorType_t type;
  cudnnBackendAttributeName_t ax, aw, ay, ac, aa, ab;
  if (op == PLAN_CONV_FWD) {
    type = CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR;
    ax = CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X;
    aw = CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W;
    ay = CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y;
    ac = CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC;
    aa = CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA;
    ab = CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA;
  } else if (op == PLAN_CONV_BWD_DATA) {
    type = CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR;
    ax = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX;
    aw = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W;
    ay = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY;
    ac = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC;
    aa = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA;
    ab = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA;
  } else {
    type = CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR;
    ax = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X;
    aw = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW;
    ay = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY;
    ac = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC;
    aa = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA;
    ab = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA;
  }
  bdesc o = desc_create(type);
  cudnnCheck(cudnnBackendSetAttribute(o, ax, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &tx));
  cudnnCheck(cudnnBackendSetAttribute(o, aw, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &tw));
  cudnnCheck(cudnnBackendSetAttribute(o, ay, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &ty));
  cudnnCheck(cudnnBackendSetAttribute(o, ac, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cd));
  cudnnCheck(cudnnBackendSetAttribute(o, aa, CUDNN_TYPE_FLOAT, 1, &alpha));
  cudnnCheck(cudnnBackendSetAttribute(o, ab, CUDNN_TYPE_FLOAT, 1, &beta));
  cudnnCheck(cudnnBackendFinalize(o));
  return o;
}

// The numerical notes of a config's engine (PLAN_NOTES_UNKNOWN when unreadable), in *rtc
// whether the engine is compiled at run time (NVRTC inside finalize: up to seconds per plan),
// and in *id its CUDNN_ATTR_ENGINE_GLOBAL_INDEX (-1 when unreadable; for the profile).
static unsigned engine_info(bdesc cfg, int *rtc, int64_t *id) {
  bdesc eng = desc_create(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
  int64_t got = 0;
  unsigned mask = 0;
  *rtc = 0;
  *id = -1;
  if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                               &got, &eng) != CUDNN_STATUS_SUCCESS || got != 1) {
    mask = PLAN_NOTES_UNKNOWN; // unknown engine: forbidden in fp32
  } else {
    int64_t idx = -1, one = 0;
    if (cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &one,
                                 &idx) == CUDNN_STATUS_SUCCESS && one == 1)
      *id = idx;
    cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
    int64_t n = 0;
    if (cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                 CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n, notes) != CUDNN_STATUS_SUCCESS)
      mask = PLAN_NOTES_UNKNOWN; // notes unknown: not provably TF32-free
    else
      for (int64_t i = 0; i < n && i < CUDNN_NUMERICAL_NOTE_TYPE_COUNT; i++)
        if ((int)notes[i] >= 0 && (int)notes[i] < 32) mask |= 1u << (int)notes[i];
    cudnnBackendBehaviorNote_t beh[CUDNN_BEHAVIOR_NOTE_TYPE_COUNT];
    int64_t nb = 0;
    if (cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE,
                                 CUDNN_BEHAVIOR_NOTE_TYPE_COUNT, &nb, beh) == CUDNN_STATUS_SUCCESS)
      for (int64_t i = 0; i < nb && i < CUDNN_BEHAVIOR_NOTE_TYPE_COUNT; i++)
        if (beh[i] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION) *rtc = 1;
  }
  cudnnCheck(cudnnBackendDestroyDescriptor(eng));
  return mask;
}

typedef struct candidate {
  bdesc cfg, plan;
  int64_t workspace;
  int rec; // its index in the profile's record (-1 when not profiling)
} candidate;

// Finalizes the plan of one allowed config into *out; else returns why it is not a candidate
// (PROF_CAND_UNTRIED meaning: it is one). Failed finalizations are expected (an engine that
// does not support the shape), so their status is an answer, not an error.
static prof_cand_status finalize_candidate(cuda_ctx *c, bdesc cfg, candidate *out,
                                           int64_t *workspace) {
  bdesc plan = desc_create(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
  cudnnCheck(cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1,
                                      &c->cudnn));
  cudnnCheck(cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                      CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg));
  int64_t ws = 0, one = 0;
  prof_cand_status st = PROF_CAND_UNTRIED;
  if (cudnnBackendFinalize(plan) != CUDNN_STATUS_SUCCESS ||
      cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                               &one, &ws) != CUDNN_STATUS_SUCCESS || ws < 0)
    st = PROF_CAND_NOT_FINALIZED;
  else if (ws > CONV_MAX_WORKSPACE)
    st = PROF_CAND_WORKSPACE;
  *workspace = ws > 0 ? ws : 0;
  if (st != PROF_CAND_UNTRIED) {
    cudnnCheck(cudnnBackendDestroyDescriptor(plan));
    return st;
  }
  out->cfg = cfg;
  out->plan = plan;
  out->workspace = ws;
  return st;
}

// Finalize up to `max` allowed plans from one heuristics mode (runtime-compiled engines only
// when allow_rtc, nondeterministic ones only when allow_nondet); returns their number. With a
// profile record, every config looked at is noted there: a candidate, or why it is not one.
static int heuristic_candidates(cuda_ctx *c, bdesc graph, cudnnBackendHeurMode_t mode,
                                int allow_rtc, int allow_nondet, candidate *out, int max,
                                bdesc *heur_out, prof_conv *rec) {
  *heur_out = NULL;
  bdesc heur = desc_create(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
  cudnnCheck(cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH,
                                      CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph));
  cudnnCheck(cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode));
  int64_t count = 0;
  if (cudnnBackendFinalize(heur) != CUDNN_STATUS_SUCCESS ||
      cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                               &count, NULL) != CUDNN_STATUS_SUCCESS ||
      count <= 0) {
    cudnnCheck(cudnnBackendDestroyDescriptor(heur));
    return 0;
  }
  bdesc *cfgs = (bdesc *)xcalloc((size_t)count, sizeof(bdesc));
  for (int64_t i = 0; i < count; i++) cfgs[i] = desc_create(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
  int64_t got = 0;
  cudnnCheck(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                      CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got, cfgs));
  int n = 0;
  for (int64_t i = 0; i < got; i++) {
    prof_cand_status st = PROF_CAND_NOT_FINALIZED;
    if (n < max) { // the rest are not looked at
      int rtc = 0;
      int64_t id = -1, ws = 0;
      unsigned notes = engine_info(cfgs[i], &rtc, &id);
      if (!plan_engine_allowed(c->precision, notes, allow_nondet)) st = PROF_CAND_REFUSED_NOTES;
      else if (rtc && !allow_rtc) st = PROF_CAND_REFUSED_RTC;
      else st = finalize_candidate(c, cfgs[i], &out[n], &ws);
      int r = prof_conv_note(rec, id, notes, ws, st);
      if (st == PROF_CAND_UNTRIED) out[n++].rec = r;
    }
    if (st != PROF_CAND_UNTRIED) cudnnCheck(cudnnBackendDestroyDescriptor(cfgs[i]));
  }
  for (int64_t i = got; i < count; i++) cudnnCheck(cudnnBackendDestroyDescriptor(cfgs[i]));
  free(cfgs);
  (void)cudaGetLastError(); // failed finalizations may leave a CUDA error behind
  *heur_out = heur;
  return n;
}

// Run a plan on ptrs (x-like, w-like, y-like). Returns cuDNN's status (checked by callers).
static cudnnStatus_t plan_execute(cuda_ctx *c, bdesc plan, int64_t workspace, void *const ptrs[3]) {
  void *ws = workspace > 0 ? cuda_workspace(c, (size_t)workspace) : c->ws;
  int64_t uids[3] = {UID_X, UID_W, UID_Y};
  void *data[3] = {ptrs[0], ptrs[1], ptrs[2]};
  bdesc vp = desc_create(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  cudnnCheck(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 3, uids));
  cudnnCheck(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 3, data));
  cudnnCheck(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws));
  cudnnCheck(cudnnBackendFinalize(vp));
  cudnnStatus_t s = cudnnBackendExecute(c->cudnn, plan, vp);
  cudnnCheck(cudnnBackendDestroyDescriptor(vp));
  return s;
}

static const char *op_name(int op) {
  return op == PLAN_CONV_FWD ? "forward" : op == PLAN_CONV_BWD_DATA ? "backward-data" : "backward-filter";
}

// Choose among the n finalized candidates (in the heuristics' order), noting in ms[] what each
// did (see plan_pick). AUTOTUNE_FASTEST times each on the live buffers (1 warm-up + 2 runs,
// ms per run) and keeps the fastest; a lone candidate is kept untimed. AUTOTUNE_FIRST runs
// them once each, untimed, in order, and keeps the first that runs: no timing, so every process
// keeps the same engine. Runs only write the op's output, which the real run then overwrites.
static int autotune(cuda_ctx *c, candidate *cand, int n, void *const ptrs[3], float *ms) {
  for (int i = 0; i < n; i++) ms[i] = PLAN_MS_UNTRIED;
  if (c->autotune == AUTOTUNE_FIRST) {
    for (int i = 0; i < n; i++) {
      int ran = plan_execute(c, cand[i].plan, cand[i].workspace, ptrs) == CUDNN_STATUS_SUCCESS;
      ms[i] = ran ? 0.0f : PLAN_MS_FAILED;
      if (ran) break;
    }
  } else if (n == 1) {
    if (cand[0].workspace > 0) cuda_workspace(c, (size_t)cand[0].workspace);
    ms[0] = 0.0f;
  } else {
    int64_t most = 0;
    for (int i = 0; i < n; i++) most = cand[i].workspace > most ? cand[i].workspace : most;
    if (most > 0) cuda_workspace(c, (size_t)most);
    for (int i = 0; i < n; i++) {
      ms[i] = PLAN_MS_FAILED;
      if (plan_execute(c, cand[i].plan, cand[i].workspace, ptrs) != CUDNN_STATUS_SUCCESS) continue;
      cudaCheck(cudaEventRecord(c->ev0, c->stream));
      int ok = 1;
      for (int r = 0; r < 2 && ok; r++)
        ok = plan_execute(c, cand[i].plan, cand[i].workspace, ptrs) == CUDNN_STATUS_SUCCESS;
      cudaCheck(cudaEventRecord(c->ev1, c->stream));
      cudaCheck(cudaEventSynchronize(c->ev1));
      float t = 0.0f;
      cudaCheck(cudaEventElapsedTime(&t, c->ev0, c->ev1));
      if (ok) ms[i] = t / 2;
    }
  }
  // A candidate that failed to launch may leave a (non-sticky) launch error behind, which the
  // next KERNEL_CHECK would pin on an innocent kernel; the candidate is already discarded.
  (void)cudaGetLastError();
  return plan_pick(c->autotune, ms, n);
}

// The profile record's view of autotuning: each candidate's time or fate, and the one kept.
static void note_autotune(prof_conv *rec, const cuda_ctx *c, const candidate *cand, int n,
                          const float *ms, int best) {
  if (!rec) return;
  int timed = c->autotune == AUTOTUNE_FASTEST && n > 1;
  for (int i = 0; i < n; i++) {
    if (cand[i].rec < 0) continue;
    prof_cand *pc = &rec->cand[cand[i].rec];
    pc->status = ms[i] >= 0.0f ? (timed ? PROF_CAND_TIMED : PROF_CAND_RAN)
                 : ms[i] == PLAN_MS_FAILED ? PROF_CAND_FAILED
                                           : PROF_CAND_UNTRIED;
    pc->ms = ms[i] >= 0.0f ? ms[i] : 0.0f;
  }
  rec->chosen = best >= 0 ? cand[best].rec : -1;
}

// The one-node operation graph of op on tensors of the given alignments; its descriptors are
// kept by p.
static bdesc conv_graph(cuda_ctx *c, conv_plan *p, int op, op_shape s, const int align[3]) {
  cudnnDataType_t dt = c->precision == PREC_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
  bdesc tx = tensor_nhwc(UID_X, dt, s.N, s.C, s.H, s.W, align[0]);
  bdesc tw = tensor_nhwc(UID_W, dt, s.K, s.C, 3, 3, align[1]); // (K,3,3,C) = KRSC
  bdesc ty = tensor_nhwc(UID_Y, dt, s.N, s.K, s.H, s.W, align[2]);
  bdesc cd = conv_desc();
  bdesc o = conv_operation(op, tx, tw, ty, cd);
  bdesc graph = desc_create(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  cudnnCheck(cudnnBackendSetAttribute(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &o));
  cudnnCheck(cudnnBackendSetAttribute(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &c->cudnn));
  cudnnCheck(cudnnBackendFinalize(graph));
  keep(p, tx); keep(p, tw); keep(p, ty); keep(p, cd); keep(p, o); keep(p, graph);
  return graph;
}

// Precompiled engines first: a runtime-compiled one costs NVRTC time in finalize (times 3
// candidates, 3 ops, every layer shape) and needs libnvrtc at run time; only when no
// precompiled engine fits (mode A, then FALLBACK) are they considered. Deterministic engines
// only, unless a shape has none at all. Returns the number of candidates, and in *nondet
// whether they came from the nondeterministic last resort.
static int conv_candidates(cuda_ctx *c, conv_plan *p, bdesc graph, candidate *cand, int *nondet,
                           prof_conv *rec) {
  static const struct {
    cudnnBackendHeurMode_t mode;
    int rtc, nondet;
  } tries[8] = {{CUDNN_HEUR_MODE_A, 0, 0}, {CUDNN_HEUR_MODE_FALLBACK, 0, 0},
                {CUDNN_HEUR_MODE_A, 1, 0}, {CUDNN_HEUR_MODE_FALLBACK, 1, 0},
                {CUDNN_HEUR_MODE_A, 0, 1}, {CUDNN_HEUR_MODE_FALLBACK, 0, 1},
                {CUDNN_HEUR_MODE_A, 1, 1}, {CUDNN_HEUR_MODE_FALLBACK, 1, 1}};
  int n = 0, t = 0;
  for (; t < 8 && n == 0; t++) {
    bdesc heur = NULL;
    n = heuristic_candidates(c, graph, tries[t].mode, tries[t].rtc, tries[t].nondet, cand,
                             CONV_CANDIDATES, &heur, rec);
    if (heur) keep(p, heur); // 6 descriptors + 8 heuristics + the config: within CONV_KEEP
  }
  *nondet = n > 0 && tries[t - 1].nondet;
  if (rec && n > 0)
    snprintf(rec->heuristics, sizeof(rec->heuristics), "%s%s%s",
             tries[t - 1].mode == CUDNN_HEUR_MODE_A ? "mode A" : "FALLBACK",
             tries[t - 1].rtc ? ", runtime-compiled allowed" : "",
             tries[t - 1].nondet ? ", nondeterministic allowed" : "");
  return n;
}

// A new record in the profile for the plan about to be built (NULL unless profiling). The
// stream is drained first so that the host time measured for the build is the build's own.
static prof_conv *profile_record(cuda_ctx *c, int op, op_shape s, const int align[3]) {
  if (!c->prof) return NULL;
  cudaCheck(cudaStreamSynchronize(c->stream));
  prof_conv *rec = cuda_prof_conv(c);
  rec->kind = op == PLAN_CONV_FWD ? PROF_CONV_FWD : op == PLAN_CONV_BWD_DATA ? PROF_CONV_BWD_DATA
                                                                             : PROF_CONV_BWD_FILTER;
  snprintf(rec->shape, sizeof(rec->shape), "%dx%d %d->%d", s.H, s.W, s.C, s.K);
  rec->N = s.N;
  for (int i = 0; i < 3; i++) rec->align[i] = align[i];
  return rec;
}

// What a convolution's messages name: its direction and shape.
#define CONV_FMT "%s convolution N=%d H=%d W=%d C=%d K=%d"
#define CONV_ARGS(op, s) op_name(op), (s).N, (s).H, (s).W, (s).C, (s).K

static conv_plan *conv_plan_get(cuda_ctx *c, int op, op_shape s, void *const ptrs[3]) {
  // Each tensor declares its own alignment: the minimum over the three would let one weight
  // tensor at an odd offset of the flat buffer push x and y off the vectorised engines too.
  int align[3];
  for (int i = 0; i < 3; i++) align[i] = plan_alignment(ptrs[i]);
  plan_key key = plan_key_conv(op, s, c->precision, align);
  conv_plan *p = (conv_plan *)plan_cache_find(&c->convs, &key);
  if (p) return p;
  if (c->capturing) // autotuning times plans: the eager step before a capture builds them all
    FATAL("a " CONV_FMT " first met during a CUDA graph capture (run with --cuda-graphs 0 and "
          "report this)", CONV_ARGS(op, s));

  // rec stays valid through this build: no other record is added meanwhile.
  prof_conv *rec = profile_record(c, op, s, align);
  double t_build = rec ? now_s() : 0.0;
  p = (conv_plan *)xcalloc(1, sizeof(conv_plan));
  bdesc graph = conv_graph(c, p, op, s, align);
  candidate cand[CONV_CANDIDATES];
  int nondet = 0, n = conv_candidates(c, p, graph, cand, &nondet, rec);
  if (nondet)
    LOG0("note: no deterministic cuDNN engine for the " CONV_FMT "; a nondeterministic one runs "
         "it (results may differ in the last bits from run to run)\n", CONV_ARGS(op, s));
  if (n == 0)
    FATAL("cuDNN has no usable engine for the " CONV_FMT " (precision %s, byte alignment x %d "
          "w %d y %d)", CONV_ARGS(op, s), plan_precision_name(c->precision), align[0], align[1],
          align[2]);
  float ms[CONV_CANDIDATES];
  double t_tune = rec ? now_s() : 0.0;
  int best = autotune(c, cand, n, ptrs, ms);
  note_autotune(rec, c, cand, n, ms, best);
  if (rec) rec->tune_ms = (now_s() - t_tune) * 1e3;
  if (best < 0) FATAL("every cuDNN plan failed for the " CONV_FMT, CONV_ARGS(op, s));
  for (int i = 0; i < n; i++)
    if (i != best) {
      cudnnCheck(cudnnBackendDestroyDescriptor(cand[i].plan));
      cudnnCheck(cudnnBackendDestroyDescriptor(cand[i].cfg));
    }
  p->plan = cand[best].plan;
  p->workspace = cand[best].workspace;
  keep(p, cand[best].cfg);
  plan_cache_insert(&c->convs, &key, p);
  if (rec) rec->build_ms = (now_s() - t_build) * 1e3;
  return p;
}

// Runs op on (x-like, w-like, y-like). cuDNN reads the inputs and writes only the op's output
// (y forward, dx backward-data, dw backward-filter): a const input is passed through the
// variant pack's void pointers unchanged.
static void conv_run(cuda_ctx *c, int op, const void *xlike, const void *wlike,
                     const void *ylike, op_shape s) {
  void *ptrs[3] = {const_cast<void *>(xlike), const_cast<void *>(wlike), const_cast<void *>(ylike)};
  conv_plan *p = conv_plan_get(c, op, s, ptrs);
  cudnnStatus_t st = plan_execute(c, p->plan, p->workspace, ptrs);
  if (st != CUDNN_STATUS_SUCCESS) {
    char msg[512];
    cudnnGetLastErrorString(msg, sizeof(msg));
    FATAL("cuDNN " CONV_FMT " failed: %s (%s)", CONV_ARGS(op, s), cudnnGetErrorString(st), msg);
  }
}

static const void *conv_weights(cuda_ctx *c, const float *w, op_shape s) {
  return c->precision == PREC_BF16 ? (const void *)cuda_shadow(c, w, (size_t)s.K * 9 * s.C)
                                   : (const void *)w;
}

// With the profiler on, each part of a convolution is a region of its own (see profile.cu).
void cuda_conv_fwd(backend *b, void *y, const void *x, const float *w, const float *bias,
                   op_shape s, activation act) {
  cuda_ctx *c = ctx_of(b);
  cuda_act_check(act, "conv_fwd");
  if (s.N == 0) return;
  PROF_BEGIN(c, PROF_CONV_FWD, "%dx%d %d->%d", s.H, s.W, s.C, s.K);
  conv_run(c, PLAN_CONV_FWD, x, conv_weights(c, w, s), y, s);
  PROF_END(c);
  PROF_BEGIN(c, PROF_CONV_EPILOGUE, "%dx%dx%d %s", s.H, s.W, s.K,
             act == ACT_RELU ? "bias+relu" : "bias");
  cuda_bias_act(c, y, y, bias, (size_t)s.N * s.H * s.W, s.K, act);
  PROF_END(c);
}

// dy is read by every part and written by none (backend.h): the bias gradient is a column sum
// of it, the filter and data gradients take it as cuDNN's DY input.
void cuda_conv_bwd(backend *b, void *dx, float *dw, float *db, const void *dy, const void *x,
                   const float *w, op_shape s) {
  cuda_ctx *c = ctx_of(b);
  size_t wcount = (size_t)s.K * 9 * s.C;
  if (s.N == 0) {
    if (dw) cuda_zero(c, dw, wcount * sizeof(float));
    if (db) cuda_zero(c, db, (size_t)s.K * sizeof(float));
    return;
  }
  if (db) {
    PROF_BEGIN(c, PROF_CONV_BIAS_GRAD, "%dx%dx%d", s.H, s.W, s.K);
    cuda_bias_grad(c, db, dy, (size_t)s.N * s.H * s.W, s.K);
    PROF_END(c);
  }
  if (dw) {
    if (c->precision == PREC_BF16) { // cuDNN writes the bf16 gradient; the flat buffer is fp32
      PROF_BEGIN(c, PROF_CONV_BWD_FILTER, "%dx%d %d->%d +widen", s.H, s.W, s.C, s.K);
      bf16 *dw16 = (bf16 *)cuda_scratch(c, wcount * sizeof(bf16));
      conv_run(c, PLAN_CONV_BWD_FILTER, x, dw16, dy, s);
      cuda_bf16_to_f32(c, dw, dw16, wcount);
    } else {
      PROF_BEGIN(c, PROF_CONV_BWD_FILTER, "%dx%d %d->%d", s.H, s.W, s.C, s.K);
      conv_run(c, PLAN_CONV_BWD_FILTER, x, dw, dy, s);
    }
    PROF_END(c);
  }
  if (dx) {
    PROF_BEGIN(c, PROF_CONV_BWD_DATA, "%dx%d %d->%d", s.H, s.W, s.C, s.K);
    conv_run(c, PLAN_CONV_BWD_DATA, dx, conv_weights(c, w, s), dy, s);
    PROF_END(c);
  }
}
