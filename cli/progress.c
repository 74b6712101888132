/* progress.c: progress reporting for long commands (bar + rate + ETA on a tty, lines otherwise). */
#include "cli/progress.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#define BAR_WIDTH 30
#define TTY_REDRAW_S 0.1
#define PLAIN_EVERY_S 5.0 /* plain mode: a line at most every 5 s (and every 10%) */

double progress_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void progress_start(progress *p, const char *label, size_t total, bool tty) {
  *p = (progress){.label = label, .total = total, .tty = tty};
  p->start = p->last_draw = progress_now();
}

static void format_eta(double s, char *buf, size_t n) {
  if (s < 0 || s > 360000) snprintf(buf, n, "--:--");
  else if (s >= 3600)
    snprintf(buf, n, "%d:%02d:%02d", (int)s / 3600, (int)s / 60 % 60, (int)s % 60);
  else snprintf(buf, n, "%02d:%02d", (int)s / 60, (int)s % 60);
}

static void draw(progress *p, double now) {
  double elapsed = now - p->start;
  double rate = elapsed > 0 ? (double)p->done / elapsed : 0;
  double frac = p->total ? (double)p->done / (double)p->total : 1;
  char eta[16];
  format_eta(rate > 0 ? (double)(p->total - p->done) / rate : -1, eta, sizeof eta);
  if (p->tty) {
    char bar[BAR_WIDTH + 1];
    int fill = (int)(frac * BAR_WIDTH);
    for (int i = 0; i < BAR_WIDTH; i++) bar[i] = i < fill ? '#' : '.';
    bar[BAR_WIDTH] = '\0';
    fprintf(stderr, "\r\033[K%s [%s] %zu/%zu %3.0f%% %.1f/s ETA %s", p->label, bar, p->done,
            p->total, 100 * frac, rate, eta);
  } else {
    fprintf(stderr, "%s: %zu/%zu (%.0f%%) %.1f/s ETA %s\n", p->label, p->done, p->total, 100 * frac,
            rate, eta);
  }
  fflush(stderr);
  p->last_draw = now;
}

void progress_update(progress *p, size_t done) {
  p->done = done;
  double now = progress_now();
  if (p->tty) {
    if (now - p->last_draw >= TTY_REDRAW_S) draw(p, now);
    return;
  }
  size_t step = p->total / 10 ? p->total / 10 : 1;
  if (done - p->last_line_done >= step && now - p->last_draw >= PLAIN_EVERY_S) {
    p->last_line_done = done;
    draw(p, now);
  }
}

void progress_finish(progress *p) {
  if (p->tty) {
    if (p->total) draw(p, progress_now());
    fputs("\r\033[K", stderr);
    fflush(stderr);
  }
}

void progress_message(progress *p, const char *fmt, ...) {
  if (p && p->tty) fputs("\r\033[K", stderr);
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  if (p && p->tty) draw(p, progress_now());
}
