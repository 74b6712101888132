/* moments.h (cli-internal): videos in the library. Each kept frame of a video is a row of the
 * photos table (path, size and mtime of the video; hash NULL) whose rowid is also in
 * photos_frames(rowid INTEGER PRIMARY KEY, t REAL NOT NULL): the frame's time in seconds. A
 * photo has no photos_frames row. The table is an ordinary one next to the clip table's shadow
 * tables, made by `index` when missing, so libraries from before videos keep opening. */
#ifndef CLI_MOMENTS_H
#define CLI_MOMENTS_H

#include <stdbool.h>

#include "cli/db.h"

#define CLI_FRAMES_TABLE CLI_TABLE "_frames"

/* Makes photos_frames when missing (the library is open for writing). */
int cli_db_ensure_frames(cli_db *db, cdb_error *err);

/* True when the library holds the photos_frames table (a library opened read-only that no
 * `index` of this version has written may lack it: then it holds no video). */
bool cli_db_has_frames(cli_db *db);

/* The k best photos and videos for the query, a video once with its best frame (t, score) and
 * its other matching frames in moments. Frames are fetched from the table in growing numbers
 * until k distinct files are found or the table has no more. exclude_path (or NULL): a video
 * left out whole (similar from one of its frames). */
int cli_db_search_videos(cli_db *db, const cli_query *q, const cli_search_opts *opts,
                         const char *exclude_path, cli_hit **hits, int *n, cdb_error *err);

/* "hh:mm:ss" of t seconds (rounded down), into out[32]. */
void cli_format_moment(double t, char out[32]);

/* "83", "83.5", "1:23", "1:02:03" -> seconds; false when s is none of these. */
bool cli_parse_moment(const char *s, double *seconds);

/* The stored frame of the video at path nearest to t: its vector and rowid (0 found, 1 when the
 * video is not indexed, -1 error). */
int cli_db_frame_vector(cli_db *db, const char *path, double t, float **out, int *dim,
                        int64_t *rowid, cdb_error *err);

/* The frame at t seconds of a video file (the first sample at or after t, else the last one),
 * embedded with the library's model; *out malloc'd (dim floats). For a video not in the
 * library. */
int cli_embed_video_frame(cli_db *db, const char *path, double t, float **out, int *dim,
                          cdb_error *err);

/* "VIDEO@T" (T as cli_parse_moment reads it) naming an existing file: *path malloc'd, 0; 1 when
 * arg is not of that form. */
int cli_split_video_at(const char *arg, char **path, double *t);

#endif
