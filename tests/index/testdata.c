/* testdata.c: synthetic clustered vectors and brute-force top-k (double accumulation). */
#include "testdata.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double td_uniform(uint64_t *s) {
  uint64_t x = (*s += 0x9e3779b97f4a7c15ULL);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return (double)(x >> 11) * 0x1.0p-53;
}

double td_normal(uint64_t *s) {
  double u = td_uniform(s), v = td_uniform(s);
  return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

static void normalise(float *v, int d) {
  double sum = 0;
  for (int j = 0; j < d; j++) sum += (double)v[j] * v[j];
  float inv = (float)(1.0 / sqrt(sum));
  for (int j = 0; j < d; j++) v[j] *= inv;
}

float *td_clustered(int64_t n, int d, int ncentres, double noise, uint64_t seed) {
  uint64_t s = seed;
  float *centres = malloc((size_t)ncentres * d * sizeof *centres);
  float *x = malloc((size_t)n * d * sizeof *x);
  for (int c = 0; c < ncentres; c++) {
    for (int j = 0; j < d; j++) centres[(size_t)c * d + j] = (float)td_normal(&s);
    normalise(centres + (size_t)c * d, d);
  }
  double sd = noise / sqrt((double)d);
  for (int64_t i = 0; i < n; i++) {
    const float *c = centres + (size_t)(td_uniform(&s) * ncentres) * d;
    float *v = x + (size_t)i * d;
    for (int j = 0; j < d; j++) v[j] = c[j] + (float)(sd * td_normal(&s));
    normalise(v, d);
  }
  free(centres);
  return x;
}

int td_brute_topk(const float *db, int64_t n, int d, const float *q, int k,
                  const unsigned char *allowed, int64_t *ids, float *sims) {
  int found = 0;
  for (int64_t i = 0; i < n; i++) {
    if (allowed && !allowed[i]) continue;
    double dot = 0;
    for (int j = 0; j < d; j++) dot += (double)db[(size_t)i * d + j] * q[j];
    float s = (float)dot;
    if (found == k && s <= sims[k - 1]) continue;
    int pos = found < k ? found++ : k - 1;
    while (pos > 0 && sims[pos - 1] < s) {
      sims[pos] = sims[pos - 1];
      ids[pos] = ids[pos - 1];
      pos--;
    }
    sims[pos] = s;
    ids[pos] = i;
  }
  return found;
}

double td_recall(const int64_t *found, int n_found, const int64_t *truth, int k) {
  int hit = 0;
  for (int i = 0; i < k; i++)
    for (int j = 0; j < n_found; j++)
      if (found[j] == truth[i]) {
        hit++;
        break;
      }
  return (double)hit / k;
}
