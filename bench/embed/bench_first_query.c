/* bench_first_query.c: the first text query of a new process, as `clipdb search` pays it:
 * model load (config, safetensors header), tokenizer load, text tower preparation and one
 * encode. Runs itself RUNS times as fresh processes and prints each time and the median.
 *   bench-first-query [--model DIR] [--runs N] [--text TEXT]
 * (a child run is `bench-first-query --once ...`: prints one line, milliseconds) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "embed/clip.h"

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

static int once(const char *dir, const char *text) {
  clip_release_blas_threads(); /* as the CLI does */
  cdb_error err = {{0}};
  double t0 = now_ms();
  clip_model *m = clip_model_load(dir, NULL, &err);
  double t_load = now_ms();
  float out[4096];
  if (!m || clip_model_dim(m) > 4096 || clip_embed_texts(m, &text, 1, out, &err) != 0) {
    fprintf(stderr, "bench-first-query: %s\n", err.msg);
    return 1;
  }
  double t_end = now_ms();
  printf("%.2f %.2f\n", t_end - t0, t_load - t0);
  clip_model_free(m);
  return 0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  const char *dir = "bench/data/clip-vit-b-32-random", *text = "a photo of a dog";
  int runs = 9, child = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--once") == 0) child = 1;
    else if (i + 1 < argc && strcmp(argv[i], "--model") == 0) dir = argv[++i];
    else if (i + 1 < argc && strcmp(argv[i], "--runs") == 0) runs = atoi(argv[++i]);
    else if (i + 1 < argc && strcmp(argv[i], "--text") == 0) text = argv[++i];
  }
  if (child) return once(dir, text);
  if (runs < 1 || runs > 1000) runs = 9;
  double *ms = calloc((size_t)runs, sizeof *ms);
  char cmd[8192];
  snprintf(cmd, sizeof cmd, "'%s' --once --model '%s' --text '%s'", argv[0], dir, text);
  printf("first text query of a new process (load + tokenizer + text tower + encode), %s:\n", dir);
  for (int r = 0; r < runs; r++) {
    FILE *p = popen(cmd, "r");
    double load = 0;
    if (!p || fscanf(p, "%lf %lf", &ms[r], &load) != 2 || pclose(p) != 0) {
      fprintf(stderr, "bench-first-query: run %d failed\n", r);
      return 1;
    }
    printf("  run %d: %.1f ms (model load %.1f ms)\n", r + 1, ms[r], load);
  }
  qsort(ms, (size_t)runs, sizeof *ms, cmp_double);
  printf("first text query: median %.1f ms, min %.1f, max %.1f over %d processes\n", ms[runs / 2],
         ms[0], ms[runs - 1], runs);
  free(ms);
  return 0;
}
