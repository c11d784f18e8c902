// run_state.c - the run's host state and the checkpoint section table built from it (see
// run_state.h). The table below is the one place that says which sections a checkpoint
// holds; tests/ckpt_tool.py's SECTIONS mirrors its (id, name, kind, since) columns.
#include "run_state.h"

#include <stdlib.h>
#include <string.h>

#include "check.h"

void run_state_init(run_state *rs, const ckpt_meta *meta) {
  memset(rs, 0, sizeof(*rs));
  rs->meta = *meta;
  if (meta->n_params > SIZE_MAX / sizeof(float) || meta->n_buffers > SIZE_MAX / sizeof(float))
    FATAL("run_state_init: %llu parameters and %llu buffers do not fit in memory",
          (unsigned long long)meta->n_params, (unsigned long long)meta->n_buffers);
  size_t P = (size_t)meta->n_params, B = (size_t)meta->n_buffers;
  rs->live.params = xmalloc(P * sizeof(float));
  rs->live.buffers = xmalloc(B * sizeof(float));
  rs->adam_m = xcalloc(P, sizeof(float));
  rs->adam_v = xcalloc(P, sizeof(float));
  rs->best.params = xmalloc(P * sizeof(float));
  rs->best.buffers = xmalloc(B * sizeof(float));
}

void run_state_free(run_state *rs) {
  if (!rs) return;
  free(rs->best.buffers);
  free(rs->best.params);
  free(rs->adam_v);
  free(rs->adam_m);
  free(rs->live.buffers);
  free(rs->live.params);
  memset(rs, 0, sizeof(*rs));
}

int run_state_sections(run_state *rs, run_sections which, ckpt_section out[CKPT_MAX_SECTIONS]) {
  const int all = which == RUN_SECTIONS_ALL;
  host_model *mdl = which == RUN_SECTIONS_BEST ? &rs->best : &rs->live;
  const uint64_t P = rs->meta.n_params * sizeof(float), B = rs->meta.n_buffers * sizeof(float);
  // id, name, kind, since (the format version that added it), data, bytes. In file order;
  // ids never change. The model's rows point at the chosen model, the others at the live
  // training state or, outside RUN_SECTIONS_ALL, nowhere.
  const ckpt_section rows[] = {
      {1, "META", CKPT_KIND_META, 1, &rs->meta, sizeof(rs->meta)},
      {2, "STATE", CKPT_KIND_STATE, 1, all ? &rs->st : NULL, sizeof(rs->st)},
      {3, "PARAMS", CKPT_KIND_F32, 1, mdl->params, P},
      {4, "ADAM_M", CKPT_KIND_F32, 1, all ? rs->adam_m : NULL, P},
      {5, "ADAM_V", CKPT_KIND_F32, 1, all ? rs->adam_v : NULL, P},
      {6, "BUFFERS", CKPT_KIND_F32, 2, mdl->buffers, B},
  };
  const int n = (int)(sizeof(rows) / sizeof(rows[0]));
  _Static_assert(sizeof(rows) / sizeof(rows[0]) <= CKPT_MAX_SECTIONS, "raise CKPT_MAX_SECTIONS");
  memcpy(out, rows, sizeof(rows));
  return n;
}

void run_state_broadcast(run_state *rs, run_sections which, comm *c) {
  ckpt_section secs[CKPT_MAX_SECTIONS];
  int n = run_state_sections(rs, which, secs);
  for (int i = 0; i < n; i++) {
    // Every rank built its meta from the same options; rank 0 checked the file against it.
    if (secs[i].kind == CKPT_KIND_META || !secs[i].data || secs[i].bytes == 0) continue;
    comm_bcast(c, secs[i].data, (size_t)secs[i].bytes, 0);
  }
}

void run_state_keep_best(run_state *rs) {
  memcpy(rs->best.params, rs->live.params, rs->meta.n_params * sizeof(float));
  memcpy(rs->best.buffers, rs->live.buffers, rs->meta.n_buffers * sizeof(float));
}
