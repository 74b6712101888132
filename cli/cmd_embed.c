/* cmd_embed.c: `clipdb embed`, a thin wrapper over embed/clip.h that prints the normalised vector
 * of a text, an image or raw pixels as one JSON array (for scripting and golden checks), with the
 * library's model when there is a library and no --model. */
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/db.h"
#include "embed/clip.h"
#include "src/file.h"

/* Raw pixel files are CxHxW float32; 3 x 1024 x 1024 is far above any CLIP input size. */
#define MAX_PIXEL_FILE_BYTES ((size_t)3 * 1024 * 1024 * sizeof(float))

static const char EMBED_USAGE[] =
    "usage: clipdb embed [--model DIR] (--text TEXT | --image PATH | --pixels FILE)\n"
    "Prints the L2-normalised embedding as one JSON array of floats.\n"
    "  --text TEXT     embed a text with the text tower\n"
    "  --image PATH    decode and preprocess an image (file or http(s) URL), embed it with the\n"
    "                  vision tower\n"
    "  --pixels FILE   raw little-endian float32 pixels, 3 x SIZE x SIZE (channel-major),\n"
    "                  already normalised with the model's mean/std (SIZE = input side)\n";

static void print_vector(const float *v, int n) {
  putchar('[');
  for (int i = 0; i < n; i++) printf(i ? ",%.9g" : "%.9g", (double)v[i]);
  puts("]");
}

static int embed_pixels_file(clip_model *model, const char *path, float *out, cdb_error *err) {
  int side = clip_model_image_size(model);
  size_t want = (size_t)3 * side * side * sizeof(float);
  size_t len = 0;
  char *buf = cdb_file_read(path, MAX_PIXEL_FILE_BYTES, &len, err);
  if (!buf) return -1;
  if (len != want) {
    free(buf);
    return cdb_error_set(err, "%s: %zu bytes, but 3 x %d x %d float32 pixels are %zu bytes", path,
                         len, side, side, want);
  }
  float *pixels = malloc(want);
  if (!pixels) {
    free(buf);
    return cdb_error_set(err, "out of memory");
  }
  for (size_t i = 0; i < want / 4; i++) { /* little-endian on disk, whatever the host */
    const unsigned char *b = (const unsigned char *)buf + 4 * i;
    uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    memcpy(&pixels[i], &u, 4);
    if (!isfinite(pixels[i])) {
      free(buf);
      free(pixels);
      return cdb_error_set(err, "%s: pixel %zu is not a finite number", path, i);
    }
  }
  free(buf);
  int rc = clip_embed_pixels(model, pixels, 1, out, err);
  free(pixels);
  return rc;
}

int cmd_embed(int argc, char **argv, const cli_ctx *ctx) {
  static const struct option longopts[] = {{"text", required_argument, 0, 't'},
                                           {"image", required_argument, 0, 'i'},
                                           {"pixels", required_argument, 0, 'p'},
                                           {"help", no_argument, 0, 'h'},
                                           {0, 0, 0, 0}};
  const char *text = NULL, *image = NULL, *pixels = NULL;
  int c;
  while ((c = getopt_long(argc, argv, "+:ht:i:p:", longopts, NULL)) != -1) {
    switch (c) {
      case 'h': return fputs(EMBED_USAGE, stdout), CLI_OK;
      case 't': text = optarg; break;
      case 'i': image = optarg; break;
      case 'p': pixels = optarg; break;
      default: return cli_option_error("embed", c, argv);
    }
  }
  if (optind != argc) return cli_usage_error("embed", "unexpected argument \"%s\"", argv[optind]);
  if ((text != NULL) + (image != NULL) + (pixels != NULL) != 1)
    return cli_usage_error("embed", "give exactly one of --text, --image, --pixels");
  cli_db db = {0};
  clip_model *model = cli_load_model(ctx, &db);
  if (!model) return CLI_FAIL;
  int dim = clip_model_dim(model);
  float *vec = calloc((size_t)dim, sizeof *vec);
  cdb_error err = {{0}};
  int rc = -1;
  if (!vec) cdb_error_set(&err, "out of memory");
  else if (text) rc = clip_embed_texts(model, &text, 1, vec, &err);
  else if (image) rc = clip_embed_image_source(model, image, vec, &err);
  else rc = embed_pixels_file(model, pixels, vec, &err);
  if (rc == 0) {
    print_vector(vec, dim); /* clip.h's vectors are unit length already */
  } else {
    cli_error("%s", err.msg);
  }
  free(vec);
  cli_unload_model(model, &db);
  return rc == 0 ? CLI_OK : CLI_FAIL;
}
