/* preview.h (cli-internal): inline thumbnails in terminals that can show images. */
#ifndef CLI_PREVIEW_H
#define CLI_PREVIEW_H

typedef enum { PREVIEW_NONE, PREVIEW_KITTY, PREVIEW_ITERM2 } preview_kind;

/* From KITTY_WINDOW_ID / TERM (xterm-kitty, xterm-ghostty) and TERM_PROGRAM (iTerm.app,
 * WezTerm); PREVIEW_NONE when stdout is not a terminal. */
preview_kind preview_detect(void);

/* Writes a thumbnail of the image at path (at most `px` pixels wide) to stdout; 0 on success
 * (nothing is written on failure). */
int preview_show(preview_kind kind, const char *path, int px);

#endif
