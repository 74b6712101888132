/* preview.c: thumbnails for `search --preview`: libvips makes a PNG thumbnail, which is sent
 * with the kitty graphics protocol (chunked base64 APC sequences) or iTerm2's inline images
 * (OSC 1337). */
#include "cli/preview.h"

#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <vips/vips.h>

#include "embed/clip.h"

#define KITTY_CHUNK 4096 /* the protocol's maximum payload per escape sequence */

preview_kind preview_detect(void) {
  if (!isatty(STDOUT_FILENO)) return PREVIEW_NONE;
  const char *term = getenv("TERM"), *prog = getenv("TERM_PROGRAM");
  if (term && strcmp(term, "dumb") == 0) return PREVIEW_NONE; /* it could show no image */
  if (getenv("KITTY_WINDOW_ID") ||
      (term && (strcmp(term, "xterm-kitty") == 0 || strcmp(term, "xterm-ghostty") == 0)))
    return PREVIEW_KITTY;
  if (prog && (strcmp(prog, "iTerm.app") == 0 || strcmp(prog, "WezTerm") == 0))
    return PREVIEW_ITERM2;
  return PREVIEW_NONE;
}

static void send_kitty(const char *b64, size_t len) {
  for (size_t off = 0; off < len; off += KITTY_CHUNK) {
    size_t n = len - off < KITTY_CHUNK ? len - off : KITTY_CHUNK;
    int more = off + n < len;
    if (off == 0) printf("\033_Gf=100,a=T,m=%d;", more);
    else printf("\033_Gm=%d;", more);
    fwrite(b64 + off, 1, n, stdout);
    fputs("\033\\", stdout);
  }
  putchar('\n');
}

int preview_show(preview_kind kind, const char *path, int px) {
  if (kind == PREVIEW_NONE || clip_vips_start() != 0) return -1;
  VipsImage *thumb = NULL;
  if (vips_thumbnail(path, &thumb, px, "height", px, NULL) != 0) {
    vips_error_clear();
    return -1;
  }
  void *png = NULL;
  size_t png_len = 0;
  int rc = vips_pngsave_buffer(thumb, &png, &png_len, NULL);
  g_object_unref(thumb);
  if (rc != 0) {
    vips_error_clear();
    return -1;
  }
  gchar *b64 = g_base64_encode(png, png_len);
  if (kind == PREVIEW_KITTY) send_kitty(b64, strlen(b64));
  else printf("\033]1337;File=inline=1;size=%zu;preserveAspectRatio=1:%s\a\n", png_len, b64);
  g_free(b64);
  g_free(png);
  fflush(stdout);
  return 0;
}
