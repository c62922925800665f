/* jsonx: jansson helpers for reading client input with precise errors, and the one shape of every
 * error body: {"error":{"message","type","param","code"}} (OpenAI's).
 *
 * The getters never trust input: each returns JSONX_OK, JSONX_MISSING or JSONX_BAD and, on
 * JSONX_BAD (or JSONX_MISSING when the field is required), writes a message naming the field into
 * err. Returned strings are borrowed from the object. */
#ifndef ORP_JSONX_H
#define ORP_JSONX_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

enum jsonx_rc { JSONX_OK = 0, JSONX_MISSING = 1, JSONX_BAD = 2 };

struct jsonx_err {
    char message[256];
    char param[64];
};

/* New reference: {"error":{...}}. param and code may be NULL (written as JSON null). */
json_t *jsonx_error_body(const char *message, const char *type, const char *param,
                         const char *code);

/* Parses a request body that must be a JSON object. Returns a new reference or NULL with err. */
json_t *jsonx_parse_object(const char *data, size_t len, struct jsonx_err *err);

enum jsonx_rc jsonx_get_string(json_t *obj, const char *key, int required, const char **out,
                               size_t max_len, struct jsonx_err *err);
/* An integer in [min, max]; JSON floats with an integral value are not accepted. */
enum jsonx_rc jsonx_get_int(json_t *obj, const char *key, int required, int64_t min, int64_t max,
                            int64_t *out, struct jsonx_err *err);
enum jsonx_rc jsonx_get_number(json_t *obj, const char *key, int required, double min, double max,
                               double *out, struct jsonx_err *err);
enum jsonx_rc jsonx_get_bool(json_t *obj, const char *key, int required, int *out,
                             struct jsonx_err *err);

/* 1 when s has no control characters (C0 or DEL): text we store and show as sent. */
int jsonx_printable(const char *s);

/* Serializes compactly; returns a new malloc'd string (caller frees) or NULL. */
char *jsonx_dump(const json_t *v);

#endif
