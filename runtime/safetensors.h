/* safetensors: reading and writing Hugging Face's safetensors checkpoints.
 *
 * A file is an 8-byte little-endian header length N, N bytes of JSON ({"name": {"dtype", "shape",
 * "data_offsets": [begin, end]}, "__metadata__": {string: string}}), then the data buffer that the
 * offsets index. st_open() maps the file(s) read-only and validates every field before anyone
 * touches a byte of data, so a tensor handed out is always inside its mapping and exactly
 * numel * dtype_size bytes long. A directory holding model.safetensors.index.json opens every
 * shard it names; otherwise the directory's model.safetensors is opened. Every error message
 * names the file and the tensor or field at fault. */
#ifndef ORP_SAFETENSORS_H
#define ORP_SAFETENSORS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Enough for every tensor of a transformer (at most 2 dims) and then some. */
#define ST_MAX_DIMS 8

enum st_dtype { ST_F32 = 0, ST_F16, ST_BF16 };

struct st_tensor {
    const char *name; /* owned by the set */
    enum st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    const unsigned char *data; /* borrowed from the mapping; may be unaligned */
    size_t nbytes;
    const char *file; /* owned by the set: the path of the file it lives in */
};

struct st_set;

/* Opens a .safetensors file, or a directory (sharded index, else model.safetensors). Returns a
 * new set (free with st_close) or NULL with a message in err. */
struct st_set *st_open(const char *path, char *err, size_t errlen);
void st_close(struct st_set *s); /* accepts NULL */

size_t st_count(const struct st_set *s);
const struct st_tensor *st_at(const struct st_set *s, size_t i);
const struct st_tensor *st_find(const struct st_set *s, const char *name); /* NULL if absent */
/* The first file's __metadata__ object, borrowed; NULL when it has none. */
json_t *st_metadata(const struct st_set *s);

const char *st_dtype_name(enum st_dtype d);
size_t st_dtype_size(enum st_dtype d);

float st_bf16_to_f32(uint16_t h);
float st_f16_to_f32(uint16_t h);
uint16_t st_f32_to_bf16(float f); /* round to nearest even; NaN stays NaN */
uint16_t st_f32_to_f16(float f);  /* round to nearest even; overflow to inf */

/* Converts a whole tensor to f32; out holds t->numel floats. */
void st_to_f32(const struct st_tensor *t, float *out);

/* Writer: one tensor to store, converted from f32 to dtype on the way out. */
struct st_wtensor {
    const char *name;
    enum st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const float *data; /* numel floats, borrowed */
};

/* Writes a single-file checkpoint atomically (temp file + rename). metadata: borrowed, may be
 * NULL, an object of strings. 0 or -1 with err. */
int st_write(const char *path, const struct st_wtensor *t, size_t n, json_t *metadata, char *err,
             size_t errlen);

#endif
