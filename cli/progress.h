/* progress.h (cli-internal): a progress bar with rate and ETA on a terminal, plain lines
 * otherwise (both on stderr). */
#ifndef CLI_PROGRESS_H
#define CLI_PROGRESS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct progress {
  const char *label;
  size_t total, done;
  bool tty;
  double start, last_draw;
  size_t last_line_done;
} progress;

void progress_start(progress *p, const char *label, size_t total, bool tty);
/* Sets the count done and redraws at most ~10 times a second (tty) or every 10% (plain). */
void progress_update(progress *p, size_t done);
/* Final line (clears the bar on a terminal). */
void progress_finish(progress *p);
/* Prints a message above the bar without garbling it. */
void progress_message(progress *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

double progress_now(void); /* monotonic seconds */

#endif
