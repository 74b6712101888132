/* video.c: samples a video's frames with FFmpeg's libraries (in-process, no subprocess) and
 * hands them over at the size images are resized to before the centre crop, so a frame goes
 * through the same preprocessing as an image of the same pixels (clip_image_preprocess_rgb).
 *
 * Sampling: one frame at each multiple of the interval (the first decoded frame at or after
 * it), the interval widened so that a video gives at most max_samples frames. Decoding does
 * only what the sampling needs:
 * - when the container's index has keyframes at least as dense as the samples, only keyframes
 *   are decoded (AVDISCARD_NONKEY) and each sample is the first keyframe at or after its time;
 * - otherwise non-reference frames are dropped before decoding (AVDISCARD_NONREF), and when the
 *   index holds a keyframe between the last decoded frame and the next sample, the demuxer
 *   seeks to it instead of decoding the frames between.
 * Frames are scaled by libswscale straight from the decoder's format to RGB24 at the resized
 * size. One decoder thread per video: callers run several videos at once.
 *
 * Bad input fails the file with a message naming it: no video stream, a frame size above the
 * pixel limit, nothing decodable, and a wall-clock or decoded-frame budget per file (a stream
 * that never ends, an absurd frame count). */
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/avstring.h>
#include <libavutil/imgutils.h>
#include <libswscale/swscale.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <vips/vips.h>

#include "embed/clip_internal.h"

struct clip_video {
  char *path;
  clip_video_params params;
  AVFormatContext *fmt;
  AVCodecContext *dec;
  AVStream *st;
  AVPacket *pkt;
  AVFrame *frame;
  struct SwsContext *sws;
  int out_w, out_h; /* the resized size frames come out at */
  uint8_t *rgb;
  double interval; /* effective, after the max_samples cap */
  double next_t;   /* time of the next sample */
  double last_t;   /* time of the last decoded frame (-1: none) */
  double read_t;   /* time of the last packet read (-1: none) */
  double seek_t;   /* keyframe last sought to: never again to it or before it (-1: none) */
  bool keyframes_only, draining, ended;
  int samples;
  int64_t decoded;
  double deadline; /* monotonic seconds */
  bool over_time;
};

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double env_double(const char *name, double fallback) {
  const char *s = getenv(name);
  char *end;
  double v = s && *s ? strtod(s, &end) : fallback;
  return s && *s && *end == '\0' && v > 0 ? v : fallback;
}

clip_video_params clip_video_default_params(void) {
  clip_video_params p = {
      .interval = 2.0,
      .max_samples = (int)env_double("CLIPDB_VIDEO_MAX_SAMPLES", 1800),
      .max_seconds = env_double("CLIPDB_VIDEO_MAX_SECONDS", 600),
      .max_decoded_frames = (int64_t)env_double("CLIPDB_VIDEO_MAX_FRAMES", 2e6),
      .max_pixels = (int64_t)env_double("CLIPDB_MAX_IMAGE_PIXELS", 100e6),
  };
  return p;
}

/* Called by libavformat during blocking I/O: stops a read that outlives the budget. */
static int interrupt_cb(void *opaque) {
  clip_video *v = opaque;
  if (now_seconds() > v->deadline) v->over_time = true;
  return v->over_time;
}

static int av_fail(clip_video *v, cdb_error *err, const char *action, int averr) {
  char msg[AV_ERROR_MAX_STRING_SIZE] = "";
  av_strerror(averr, msg, sizeof msg);
  if (v->over_time)
    return cdb_error_set(err, "video: %s: over the time budget of %g s per file", v->path,
                         v->params.max_seconds);
  return cdb_error_set(err, "video: %s: %s: %s", v->path, action, msg);
}

void clip_video_close(clip_video *v) {
  if (!v) return;
  sws_freeContext(v->sws);
  av_frame_free(&v->frame);
  av_packet_free(&v->pkt);
  avcodec_free_context(&v->dec);
  avformat_close_input(&v->fmt);
  av_free(v->rgb);
  free(v->path);
  free(v);
}

static double stream_seconds(const clip_video *v, int64_t ts) {
  int64_t start = v->st->start_time != AV_NOPTS_VALUE ? v->st->start_time : 0;
  return (double)(ts - start) * av_q2d(v->st->time_base);
}

static int64_t stream_ts(const clip_video *v, double seconds) {
  int64_t start = v->st->start_time != AV_NOPTS_VALUE ? v->st->start_time : 0;
  return start + (int64_t)llround(seconds / av_q2d(v->st->time_base));
}

double clip_video_duration(const clip_video *v) {
  if (v->st->duration > 0 && v->st->duration != AV_NOPTS_VALUE)
    return (double)v->st->duration * av_q2d(v->st->time_base);
  if (v->fmt->duration > 0 && v->fmt->duration != AV_NOPTS_VALUE)
    return (double)v->fmt->duration / AV_TIME_BASE;
  return 0.0;
}

void clip_video_source_size(const clip_video *v, int *width, int *height) {
  *width = v->dec->width;
  *height = v->dec->height;
}

/* Keyframe-only decoding when the index's keyframes are at most one interval apart. */
static bool keyframes_dense(const clip_video *v, double duration) {
  int n = avformat_index_get_entries_count(v->st), keys = 0;
  for (int i = 0; i < n; i++) {
    const AVIndexEntry *e = avformat_index_get_entry(v->st, i);
    if (e && (e->flags & AVINDEX_KEYFRAME)) keys++;
  }
  return keys >= 2 && duration > 0 && duration / keys <= v->interval;
}

static int open_decoder(clip_video *v, cdb_error *err) {
  int idx = av_find_best_stream(v->fmt, AVMEDIA_TYPE_VIDEO, -1, -1, NULL, 0);
  if (idx < 0) return cdb_error_set(err, "video: %s: no video stream (audio only?)", v->path);
  v->st = v->fmt->streams[idx];
  const AVCodecParameters *par = v->st->codecpar;
  if (par->width <= 0 || par->height <= 0)
    return cdb_error_set(err, "video: %s: video stream has no frame size", v->path);
  if ((int64_t)par->width * par->height > v->params.max_pixels)
    return cdb_error_set(err,
                         "video: %s: frames are %dx%d pixels, more than the %lld allowed; raise "
                         "CLIPDB_MAX_IMAGE_PIXELS",
                         v->path, par->width, par->height, (long long)v->params.max_pixels);
  const AVCodec *codec = avcodec_find_decoder(par->codec_id);
  if (!codec)
    return cdb_error_set(err, "video: %s: no decoder for codec %s", v->path,
                         avcodec_get_name(par->codec_id));
  if (!(v->dec = avcodec_alloc_context3(codec))) return cdb_error_set(err, "video: out of memory");
  int rc = avcodec_parameters_to_context(v->dec, par);
  v->dec->thread_count = 1;
  for (int i = 0; i < (int)v->fmt->nb_streams; i++)
    v->fmt->streams[i]->discard = i == idx ? AVDISCARD_DEFAULT : AVDISCARD_ALL;
  if (rc >= 0) rc = avcodec_open2(v->dec, codec, NULL);
  if (rc < 0) return av_fail(v, err, "cannot open the decoder", rc);
  return 0;
}

static void plan_sampling(clip_video *v) {
  double duration = clip_video_duration(v);
  v->interval = v->params.interval > 0 ? v->params.interval : 2.0;
  if (duration > 0 && v->params.max_samples > 0 && duration / v->interval > v->params.max_samples)
    v->interval = duration / v->params.max_samples;
  v->keyframes_only = keyframes_dense(v, duration);
  v->dec->skip_frame = v->keyframes_only ? AVDISCARD_NONKEY : AVDISCARD_NONREF;
  v->next_t = 0.0;
  v->last_t = -1.0;
  v->read_t = -1.0;
  v->seek_t = -1.0;
}

/* Only local files, and only containers that reference no other file or URL (hls, concat and
 * the like would open what the file names). */
#define VIDEO_FORMATS "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpeg,mpegts,flv,ogg,h264,hevc"

static int open_input(clip_video *v, const char *path) {
  AVDictionary *opts = NULL;
  av_dict_set(&opts, "protocol_whitelist", "file", 0);
  v->fmt->format_whitelist = av_strdup(VIDEO_FORMATS);
  char *url = av_asprintf("file:%s", path); /* never parsed as another protocol */
  int rc = AVERROR(ENOMEM);
  if (url && v->fmt->format_whitelist)
    rc = avformat_open_input(&v->fmt, url, NULL, &opts); /* frees v->fmt on failure */
  av_free(url);
  av_dict_free(&opts);
  return rc;
}

clip_video *clip_video_open(const clip_model *model, const char *path,
                            const clip_video_params *params, cdb_error *err) {
  return clip_video_open_spec(clip_model_image_spec(model), path, params, err);
}

clip_video *clip_video_open_spec(const clip_image_spec *spec, const char *path,
                                 const clip_video_params *params, cdb_error *err) {
  clip_video *v = calloc(1, sizeof *v);
  if (!v || !(v->path = strdup(path))) {
    free(v);
    cdb_error_set(err, "video: out of memory");
    return NULL;
  }
  v->params = params ? *params : clip_video_default_params();
  v->deadline = now_seconds() + v->params.max_seconds;
  av_log_set_level(AV_LOG_QUIET);
  int rc = -1;
  if (!(v->fmt = avformat_alloc_context())) goto fail_oom;
  v->fmt->interrupt_callback = (AVIOInterruptCB){interrupt_cb, v};
  if ((rc = open_input(v, path)) < 0) {
    /* avformat_open_input frees the context on failure */
    /* EINVAL: a container off the whitelist (a playlist, say) */
    bool unknown = rc == AVERROR_INVALIDDATA || rc == AVERROR(EINVAL);
    av_fail(v, err, unknown ? "not a video in a container clipdb reads" : "cannot open", rc);
    goto fail;
  }
  if ((rc = avformat_find_stream_info(v->fmt, NULL)) < 0) {
    av_fail(v, err, "cannot read the stream information", rc);
    goto fail;
  }
  if (open_decoder(v, err) < 0) goto fail;
  int w = v->dec->width, h = v->dec->height;
  clip_image_resized_dims(spec, w, h, &v->out_w, &v->out_h);
  if (v->out_w == 0) {
    cdb_error_set(err, "video: %s: %dx%d has too extreme an aspect ratio", path, w, h);
    goto fail;
  }
  v->pkt = av_packet_alloc();
  v->frame = av_frame_alloc();
  v->rgb = av_malloc((size_t)v->out_w * v->out_h * 3);
  if (!v->pkt || !v->frame || !v->rgb) goto fail_oom;
  plan_sampling(v);
  return v;
fail_oom:
  cdb_error_set(err, "video: out of memory");
fail:
  clip_video_close(v);
  return NULL;
}

/* Seeks to the index's last keyframe at or before the next sample when it lies after the last
 * packet read (decoding from there costs less than decoding the frames between). */
static void skip_ahead(clip_video *v) {
  if (v->keyframes_only || v->read_t < 0) return;
  int64_t target = stream_ts(v, v->next_t);
  int i = av_index_search_timestamp(v->st, target, AVSEEK_FLAG_BACKWARD);
  const AVIndexEntry *e = i >= 0 ? avformat_index_get_entry(v->st, i) : NULL;
  double key_t = e ? stream_seconds(v, e->timestamp) : -1.0;
  if (!e || key_t <= v->read_t + 1e-6 || key_t <= v->seek_t + 1e-6) return;
  v->seek_t = key_t;
  if (av_seek_frame(v->fmt, v->st->index, e->timestamp, AVSEEK_FLAG_BACKWARD) >= 0)
    avcodec_flush_buffers(v->dec);
}

static int scale_frame(clip_video *v, clip_video_frame *out, double t, cdb_error *err) {
  AVFrame *f = v->frame;
  if ((int64_t)f->width * f->height > v->params.max_pixels) /* a size change mid-stream */
    return cdb_error_set(err, "video: %s: a frame is %dx%d pixels, more than the %lld allowed",
                         v->path, f->width, f->height, (long long)v->params.max_pixels);
  v->sws = sws_getCachedContext(v->sws, f->width, f->height, f->format, v->out_w, v->out_h,
                                AV_PIX_FMT_RGB24, SWS_BICUBIC, NULL, NULL, NULL);
  if (!v->sws)
    return cdb_error_set(err, "video: %s: cannot convert frames of %dx%d (format %d)", v->path,
                         f->width, f->height, f->format);
  uint8_t *dst[4] = {v->rgb};
  int stride[4] = {v->out_w * 3};
  sws_scale(v->sws, (const uint8_t *const *)f->data, f->linesize, 0, f->height, dst, stride);
  *out = (clip_video_frame){.t = t, .width = v->out_w, .height = v->out_h, .rgb = v->rgb};
  return 1;
}

static int check_budget(clip_video *v, cdb_error *err) {
  if (v->decoded > v->params.max_decoded_frames)
    return cdb_error_set(err, "video: %s: more than %lld frames decoded, over the budget per file",
                         v->path, (long long)v->params.max_decoded_frames);
  if (now_seconds() > v->deadline || v->over_time)
    return cdb_error_set(err, "video: %s: over the time budget of %g s per file", v->path,
                         v->params.max_seconds);
  return 0;
}

/* A decoded frame: 1 when it is the next sample (out filled), 0 when skipped. */
static int take_frame(clip_video *v, clip_video_frame *out, cdb_error *err) {
  int64_t ts = v->frame->best_effort_timestamp;
  double t = ts != AV_NOPTS_VALUE ? stream_seconds(v, ts) : v->last_t + v->interval;
  if (t < 0) t = 0;
  v->last_t = t;
  v->decoded++;
  if (t + 1e-3 < v->next_t) return 0;
  if (v->params.max_samples > 0 && v->samples >= v->params.max_samples) {
    v->ended = true;
    return 0;
  }
  v->samples++;
  v->next_t = (floor(t / v->interval + 1e-6) + 1) * v->interval;
  return scale_frame(v, out, t, err);
}

/* Feeds one packet (or the end of the stream) to the decoder: 0, or -1 at a fatal error. */
static int feed(clip_video *v, cdb_error *err) {
  skip_ahead(v);
  int rc = av_read_frame(v->fmt, v->pkt);
  if (rc == AVERROR_EOF || (rc < 0 && !v->over_time && rc != AVERROR_EXIT)) {
    v->draining = true;
    avcodec_send_packet(v->dec, NULL);
    return 0;
  }
  if (rc < 0) return av_fail(v, err, "cannot read", rc);
  if (v->pkt->stream_index == v->st->index) {
    int64_t ts = v->pkt->dts != AV_NOPTS_VALUE ? v->pkt->dts : v->pkt->pts;
    if (ts != AV_NOPTS_VALUE) v->read_t = stream_seconds(v, ts);
    avcodec_send_packet(v->dec, v->pkt);
  }
  av_packet_unref(v->pkt);
  return 0;
}

int clip_video_next(clip_video *v, clip_video_frame *out, cdb_error *err) {
  while (!v->ended) {
    if (check_budget(v, err) < 0) return -1;
    int rc = avcodec_receive_frame(v->dec, v->frame);
    if (rc == 0) {
      int taken = take_frame(v, out, err);
      av_frame_unref(v->frame);
      if (taken != 0) return taken;
    } else if (rc == AVERROR(EAGAIN) && !v->draining) {
      if (feed(v, err) < 0) return -1;
    } else {
      v->ended = true; /* drained, or a decoder error at the end of a truncated stream */
    }
  }
  if (v->samples == 0)
    return cdb_error_set(err, "video: %s: no frame could be decoded (truncated or corrupt?)",
                         v->path);
  return 0;
}

int clip_video_frame_pixels(const clip_model *model, const clip_video_frame *f, float *pixels,
                            cdb_error *err) {
  return clip_image_preprocess_rgb(clip_model_image_spec(model), f->rgb, f->width, f->height,
                                   pixels, err);
}

int clip_video_frame_png(const clip_video_frame *f, void **buf, size_t *len, cdb_error *err) {
  if (clip_vips_start() < 0) return cdb_error_set(err, "video: libvips failed to initialise");
  VipsImage *img = vips_image_new_from_memory(f->rgb, (size_t)f->width * f->height * 3, f->width,
                                              f->height, 3, VIPS_FORMAT_UCHAR);
  int rc = img ? vips_pngsave_buffer(img, buf, len, "compression", 1, "strip", TRUE, NULL) : -1;
  if (img) g_object_unref(img);
  if (rc != 0) {
    vips_error_clear();
    return cdb_error_set(err, "video: cannot encode a frame as PNG");
  }
  return 0;
}

/* ---- sampling with scene changes, embedded in batches ---- */

#define VIDEO_BATCH 16

typedef struct pending {
  float *pixels, *vecs;
  double t[VIDEO_BATCH];
  int n;
} pending;

static float dot(const float *a, const float *b, int dim) {
  float s = 0;
  for (int i = 0; i < dim; i++) s += a[i] * b[i];
  return s;
}

/* Embeds the pending frames and passes on those that differ enough from the last kept one. */
static int flush(clip_model *m, pending *p, float *last, bool *have_last, float max_similarity,
                 clip_video_sink sink, void *ctx, clip_video_stats *stats, cdb_error *err) {
  if (p->n == 0) return 0;
  int dim = clip_model_dim(m);
  if (clip_embed_pixels(m, p->pixels, p->n, p->vecs, err) < 0) return -1;
  stats->embedded += p->n;
  for (int i = 0; i < p->n; i++) {
    const float *vec = p->vecs + (size_t)i * dim;
    if (*have_last && dot(vec, last, dim) >= max_similarity) continue;
    memcpy(last, vec, sizeof(float) * dim);
    *have_last = true;
    stats->kept++;
    if (sink(ctx, p->t[i], vec, err) < 0) return -1;
  }
  p->n = 0;
  return 0;
}

int clip_video_embed(clip_model *m, const char *path, const clip_video_params *params,
                     float max_similarity, clip_video_sink sink, void *ctx, clip_video_stats *stats,
                     cdb_error *err) {
  *stats = (clip_video_stats){0};
  clip_video *v = clip_video_open(m, path, params, err);
  if (!v) return -1;
  int dim = clip_model_dim(m), size = clip_model_image_size(m);
  size_t per = (size_t)3 * size * size;
  pending p = {malloc(sizeof(float) * per * VIDEO_BATCH),
               malloc(sizeof(float) * dim * VIDEO_BATCH),
               {0},
               0};
  float *last = malloc(sizeof(float) * dim);
  bool have_last = false;
  int rc = p.pixels && p.vecs && last ? 0 : cdb_error_set(err, "video: out of memory");
  clip_video_frame f;
  while (rc == 0) {
    int got = clip_video_next(v, &f, err);
    if (got <= 0) {
      rc = got;
      break;
    }
    stats->sampled++;
    rc = clip_video_frame_pixels(m, &f, p.pixels + per * p.n, err);
    if (rc == 0) p.t[p.n++] = f.t;
    if (rc == 0 && p.n == VIDEO_BATCH)
      rc = flush(m, &p, last, &have_last, max_similarity, sink, ctx, stats, err);
  }
  if (rc == 0) rc = flush(m, &p, last, &have_last, max_similarity, sink, ctx, stats, err);
  stats->duration = clip_video_duration(v);
  stats->decoded = v->decoded;
  free(p.pixels);
  free(p.vecs);
  free(last);
  clip_video_close(v);
  return rc;
}
