/* cmd_classify.c: `clipdb classify IMAGE LABEL...`: zero-shot classification with the encoder
 * directly (no database): softmax over exp(logit_scale) * cosine(image, "a photo of a LABEL"). */
#include <getopt.h>
#include <json-c/json.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "embed/clip.h"

#define DEFAULT_TEMPLATE "a photo of a {}"
#define MAX_LABEL_BYTES 1000

static const char USAGE[] =
    "usage: clipdb classify [--model NAME] [--template T] [--json] IMAGE LABEL...\n"
    "Zero-shot classification: the probability that IMAGE shows each LABEL.\n"
    "  --template T   prompt for each label, \"{}\" stands for the label\n"
    "                 (default \"" DEFAULT_TEMPLATE "\"; \"{}\" uses the bare label)\n"
    "  --json         print [{\"label\": ..., \"probability\": ...}, ...], most likely first\n";

typedef struct scored {
  const char *label;
  double p;
} scored;

static int by_probability_desc(const void *a, const void *b) {
  double x = ((const scored *)a)->p, y = ((const scored *)b)->p;
  return (x < y) - (x > y);
}

/* "a photo of a {}" + "red star" -> "a photo of a red star" (first "{}" only), malloc'd. */
static char *fill_template(const char *tmpl, const char *label) {
  const char *hole = strstr(tmpl, "{}");
  if (!hole) return strdup(tmpl);
  size_t a = (size_t)(hole - tmpl), b = strlen(label), c = strlen(hole + 2);
  char *s = malloc(a + b + c + 1);
  if (!s) return NULL;
  memcpy(s, tmpl, a);
  memcpy(s + a, label, b);
  memcpy(s + a + b, hole + 2, c + 1);
  return s;
}

static int classify(clip_model *model, const char *image, char **labels, int n, const char *tmpl,
                    scored *out, cdb_error *err) {
  int dim = clip_model_dim(model);
  float *img = malloc(sizeof(float) * (size_t)dim);
  float *txt = malloc(sizeof(float) * (size_t)dim * (size_t)n);
  char **prompts = calloc((size_t)n, sizeof *prompts);
  int rc = -1;
  if (!img || !txt || !prompts) {
    cdb_error_set(err, "out of memory");
    goto done;
  }
  for (int i = 0; i < n; i++)
    if (!(prompts[i] = fill_template(tmpl, labels[i]))) {
      cdb_error_set(err, "out of memory");
      goto done;
    }
  if (clip_embed_image_files(model, &image, 1, img, err) != 0) goto done;
  if (clip_embed_texts(model, (const char *const *)prompts, n, txt, err) != 0) goto done;
  double scale = exp((double)clip_model_logit_scale(model)), maxlogit = -INFINITY, sum = 0;
  for (int i = 0; i < n; i++) {
    double dot = 0;
    for (int d = 0; d < dim; d++) dot += (double)img[d] * txt[(size_t)i * dim + d];
    out[i] = (scored){labels[i], scale * dot};
    if (out[i].p > maxlogit) maxlogit = out[i].p;
  }
  for (int i = 0; i < n; i++) sum += (out[i].p = exp(out[i].p - maxlogit));
  for (int i = 0; i < n; i++) out[i].p /= sum;
  rc = 0;
done:
  if (prompts)
    for (int i = 0; i < n; i++) free(prompts[i]);
  free(prompts);
  free(txt);
  free(img);
  return rc;
}

static void print_results(const scored *s, int n, bool json) {
  if (!json) {
    for (int i = 0; i < n; i++) printf("%.4f  %s\n", s[i].p, s[i].label);
    return;
  }
  json_object *arr = json_object_new_array();
  for (int i = 0; i < n; i++) {
    json_object *o = json_object_new_object();
    json_object_object_add(o, "label", json_object_new_string(s[i].label));
    json_object_object_add(o, "probability", json_object_new_double(s[i].p));
    json_object_array_add(arr, o);
  }
  puts(json_object_to_json_string_ext(arr, CLI_JSON_FLAGS));
  json_object_put(arr);
}

int cmd_classify(int argc, char **argv, const cli_ctx *ctx) {
  static const struct option longopts[] = {{"template", required_argument, 0, 't'},
                                           {"json", no_argument, 0, 'j'},
                                           {"help", no_argument, 0, 'h'},
                                           {0, 0, 0, 0}};
  const char *tmpl = DEFAULT_TEMPLATE;
  bool json = false;
  int c;
  while ((c = getopt_long(argc, argv, "ht:j", longopts, NULL)) != -1) {
    switch (c) {
      case 'h': return fputs(USAGE, stdout), CLI_OK;
      case 't': tmpl = optarg; break;
      case 'j': json = true; break;
      default: return cli_usage_error("classify", "unknown option");
    }
  }
  if (argc - optind < 3) return cli_usage_error("classify", "expected IMAGE and at least two LABELs");
  const char *image = argv[optind];
  char **labels = argv + optind + 1;
  int n = argc - optind - 1;
  for (int i = 0; i < n; i++)
    if (strlen(labels[i]) > MAX_LABEL_BYTES)
      return cli_usage_error("classify", "label %d is longer than %d bytes", i + 1, MAX_LABEL_BYTES);
  cdb_error err = {{0}};
  char *dir = cli_model_dir(ctx, &err);
  clip_model *model = dir ? clip_model_load(dir, NULL, &err) : NULL;
  free(dir);
  if (!model) {
    cli_error("%s", err.msg);
    return CLI_FAIL;
  }
  scored *res = calloc((size_t)n, sizeof *res);
  int rc = CLI_FAIL;
  if (!res) {
    cli_error("out of memory");
  } else if (classify(model, image, labels, n, tmpl, res, &err) != 0) {
    cli_error("%s", err.msg);
  } else {
    qsort(res, (size_t)n, sizeof *res, by_probability_desc);
    print_results(res, n, json);
    rc = CLI_OK;
  }
  free(res);
  clip_model_free(model);
  return rc;
}
