/* test_safetensors: the reader accepts what the writer writes (and sharded checkpoints), and
 * refuses each kind of broken header with a message naming the file and the tensor. */
#include <math.h>
#include <stdint.h>
#include <sys/stat.h>

#include "rt_test.h"
#include "safetensors.h"

static char dir[256];

/* A file of: 8-byte length, header, then data_len zero bytes. hlen_override > 0 lies about the
 * header length. */
static void write_raw(const char *path, const char *header, size_t data_len, uint64_t hlen_override)
{
    size_t hl = strlen(header);
    uint64_t len = hlen_override ? hlen_override : hl;
    size_t n = 8 + hl + data_len;
    unsigned char *b = calloc(1, n);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(len >> (8 * i));
    memcpy(b + 8, header, hl);
    rt_write(path, b, n);
    free(b);
}

/* Opening path must fail with a message holding each of the given parts. */
static void expect_error(const char *path, const char *part1, const char *part2)
{
    char err[512] = "";
    struct st_set *s = st_open(path, err, sizeof err);
    if (s) fprintf(stderr, "opened %s, expected an error with \"%s\"\n", path, part1);
    CHECK(s == NULL);
    CHECK_CONTAINS(err, path);
    CHECK_CONTAINS(err, part1);
    if (part2) CHECK_CONTAINS(err, part2);
}

static void test_roundtrip(void)
{
    char path[300], err[512];
    snprintf(path, sizeof path, "%s/good.safetensors", dir);
    const float a[6] = {1, -2, 0.5f, 3.25f, -0.0f, 1024};
    const float b[4] = {1.5f, -7, 0.125f, 65504};
    const float c[3] = {2, -0.25f, 100};
    struct st_wtensor t[] = {
        {.name = "a", .dtype = ST_F32, .ndim = 2, .shape = {2, 3}, .data = a},
        {.name = "b.f16", .dtype = ST_F16, .ndim = 1, .shape = {4}, .data = b},
        {.name = "c.bf16", .dtype = ST_BF16, .ndim = 1, .shape = {3}, .data = c},
    };
    json_t *meta = json_pack("{s:s}", "format", "pt");
    CHECK(st_write(path, t, 3, meta, err, sizeof err) == 0);
    json_decref(meta);
    struct st_set *s = st_open(path, err, sizeof err);
    if (!s) fprintf(stderr, "%s\n", err);
    CHECK(s != NULL);
    CHECK_INT_EQ(st_count(s), 3);
    CHECK_STR_EQ(json_string_value(json_object_get(st_metadata(s), "format")), "pt");
    const struct st_tensor *ta = st_find(s, "a"), *tb = st_find(s, "b.f16"),
                           *tc = st_find(s, "c.bf16");
    CHECK(ta && tb && tc && !st_find(s, "nope"));
    CHECK_INT_EQ(ta->ndim, 2);
    CHECK_INT_EQ(ta->shape[0], 2);
    CHECK_INT_EQ(ta->shape[1], 3);
    CHECK_INT_EQ(tb->dtype, ST_F16);
    CHECK_INT_EQ(tc->nbytes, 6);
    float out[6];
    st_to_f32(ta, out);
    for (int i = 0; i < 6; i++)
        CHECK(out[i] == a[i]);
    st_to_f32(tb, out);
    for (int i = 0; i < 4; i++)
        CHECK(out[i] == b[i]);
    st_to_f32(tc, out);
    for (int i = 0; i < 3; i++)
        CHECK(out[i] == c[i]);
    st_close(s);
}

static void test_conversions(void)
{
    CHECK_INT_EQ(st_f32_to_f16(1.0f), 0x3c00);
    CHECK_INT_EQ(st_f32_to_f16(-2.0f), 0xc000);
    CHECK_INT_EQ(st_f32_to_f16(65504.0f), 0x7bff);
    CHECK_INT_EQ(st_f32_to_f16(1e6f), 0x7c00);     /* overflow -> inf */
    CHECK_INT_EQ(st_f32_to_f16(0x1p-24f), 0x0001); /* smallest subnormal */
    CHECK(st_f16_to_f32(0x0001) == 0x1p-24f);
    CHECK(st_f16_to_f32(0x03ff) == 0x1.ff8p-15f); /* largest subnormal */
    CHECK(isinf(st_f16_to_f32(0x7c00)) && isnan(st_f16_to_f32(0x7e00)));
    CHECK_INT_EQ(st_f32_to_bf16(1.0f), 0x3f80);
    CHECK(st_bf16_to_f32(st_f32_to_bf16(1.0f + 1.0f / 256)) == 1.0f); /* ties to even */
    CHECK(isnan(st_bf16_to_f32(st_f32_to_bf16(NAN))));
}

static void test_bad_headers(void)
{
    char p[300];
    snprintf(p, sizeof p, "%s/bad.safetensors", dir);

    rt_write(p, "\x05\0\0", 3);
    expect_error(p, "truncated", NULL);

    write_raw(p, "{}", 0, 1000);
    expect_error(p, "header length 1000", "does not fit");

    write_raw(p, "{\"a\": {\"dtype\": ", 0, 0);
    expect_error(p, "not valid JSON", NULL);

    write_raw(p, "[1, 2]", 0, 0);
    expect_error(p, "not a JSON object", NULL);

    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, 0);
    expect_error(p, "tensor 'w'", "out of bounds");

    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, 0);
    expect_error(p, "tensor 'w'", "need 8");

    write_raw(p, "{\"w\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,4]}}", 4, 0);
    expect_error(p, "tensor 'w'", "need 6");

    write_raw(p,
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
              12, 0);
    expect_error(p, "overlaps", "'b'");

    write_raw(p,
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
              12, 0);
    expect_error(p, "tensor 'b'", "hole");

    write_raw(p, "{\"w\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4, 0);
    expect_error(p, "tensor 'w'", "dtype \"I8\" is not supported");

    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, 0);
    expect_error(p, "tensor 'w'", "shape[0]");

    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, 0);
    expect_error(p, "tensor 'w'", "data_offsets");

    write_raw(p, "{\"__metadata__\":{\"format\":1}}", 0, 0);
    expect_error(p, "__metadata__", "format");

    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, 0);
    expect_error(p, "4 bytes no tensor uses", NULL);

    snprintf(p, sizeof p, "%s/missing.safetensors", dir);
    expect_error(p, "cannot open", NULL);
}

static void test_sharded(void)
{
    char sub[300], p[400], err[512];
    snprintf(sub, sizeof sub, "%s/sharded", dir);
    CHECK(mkdir(sub, 0755) == 0);
    const float x[2] = {1, 2}, y[3] = {3, 4, 5};
    struct st_wtensor tx = {.name = "x", .dtype = ST_F32, .ndim = 1, .shape = {2}, .data = x};
    struct st_wtensor ty = {.name = "y", .dtype = ST_BF16, .ndim = 1, .shape = {3}, .data = y};
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", sub);
    CHECK(st_write(p, &tx, 1, NULL, err, sizeof err) == 0);
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", sub);
    CHECK(st_write(p, &ty, 1, NULL, err, sizeof err) == 0);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", sub);
    const char *idx = "{\"metadata\":{},\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\","
                      "\"y\":\"model-00002-of-00002.safetensors\"}}";
    rt_write(p, idx, strlen(idx));
    struct st_set *s = st_open(sub, err, sizeof err);
    if (!s) fprintf(stderr, "%s\n", err);
    CHECK(s != NULL);
    CHECK_INT_EQ(st_count(s), 2);
    float out[3];
    st_to_f32(st_find(s, "y"), out);
    CHECK(out[0] == 3 && out[2] == 5);
    CHECK_CONTAINS(st_find(s, "x")->file, "00001");
    st_close(s);

    /* The index claims a tensor that is in the other shard. */
    idx = "{\"weight_map\":{\"x\":\"model-00002-of-00002.safetensors\","
          "\"y\":\"model-00002-of-00002.safetensors\"}}";
    rt_write(p, idx, strlen(idx));
    s = st_open(sub, err, sizeof err);
    CHECK(s == NULL);
    CHECK_CONTAINS(err, "model.safetensors.index.json");
    CHECK_CONTAINS(err, "tensor 'x'");

    idx = "{\"weight_map\":{\"x\":\"../evil.safetensors\"}}";
    rt_write(p, idx, strlen(idx));
    s = st_open(sub, err, sizeof err);
    CHECK(s == NULL);
    CHECK_CONTAINS(err, "plain file name");
}

int main(void)
{
    rt_tmpdir(dir, sizeof dir);
    test_conversions();
    test_roundtrip();
    test_bad_headers();
    test_sharded();
    rt_rmtree(dir);
    printf("test_safetensors: ok\n");
    return 0;
}
