/* meta.h (cli-internal): what `index` records about a photo besides its vector: a content hash
 * and header metadata read by libvips (no pixel decoding). */
#ifndef CLI_META_H
#define CLI_META_H

#include <stddef.h>

#include "src/err.h"

#define META_HASH_HEX 65 /* SHA-256 in hex + NUL */

typedef struct photo_meta {
  char taken_at[20]; /* "YYYY-MM-DD HH:MM:SS" from EXIF DateTimeOriginal, or "" when absent */
  int width, height; /* as displayed (EXIF orientation applied) */
  char format[16];   /* "jpeg", "png", "webp", ... (libvips loader name without "load") */
} photo_meta;

/* Hex SHA-256 of len bytes (GLib GChecksum). */
void meta_hash(const void *data, size_t len, char out[META_HASH_HEX]);

/* Reads the header of an encoded image in memory. -1 with err set when libvips cannot. */
int meta_read(const void *data, size_t len, photo_meta *out, cdb_error *err);

/* "2019:08:03 14:22:01 (...)" (libvips' EXIF string) -> "2019-08-03 14:22:01"; 0 when valid. */
int meta_parse_exif_date(const char *s, char out[20]);

#endif
