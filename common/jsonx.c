/* jsonx: see jsonx.h. */
#include "jsonx.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

json_t *jsonx_error_body(const char *message, const char *type, const char *param, const char *code)
{
    json_t *e = json_object();
    json_object_set_new(e, "message", json_string(message ? message : ""));
    json_object_set_new(e, "type", json_string(type ? type : "invalid_request_error"));
    json_object_set_new(e, "param", param ? json_string(param) : json_null());
    json_object_set_new(e, "code", code ? json_string(code) : json_null());
    json_t *root = json_object();
    json_object_set_new(root, "error", e);
    return root;
}

__attribute__((format(printf, 3, 0))) static void set_err(struct jsonx_err *err, const char *param,
                                                          const char *fmt, const char *key,
                                                          const char *extra)
{
    if (!err) return;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    snprintf(err->message, sizeof err->message, fmt, key, extra ? extra : "");
#pragma GCC diagnostic pop
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
}

json_t *jsonx_parse_object(const char *data, size_t len, struct jsonx_err *err)
{
    json_error_t je;
    if (len == 0) {
        set_err(err, NULL, "request body is empty; expected a JSON object%s%s", "", NULL);
        return NULL;
    }
    json_t *v = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
    if (!v) {
        if (err) {
            snprintf(err->message, sizeof err->message,
                     "request body is not valid JSON: %s (line %d, column %d)", je.text, je.line,
                     je.column);
            err->param[0] = '\0';
        }
        return NULL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        set_err(err, NULL, "request body must be a JSON object%s%s", "", NULL);
        return NULL;
    }
    return v;
}

static enum jsonx_rc missing(const char *key, int required, struct jsonx_err *err)
{
    if (required) set_err(err, key, "missing required field '%s'%s", key, NULL);
    return JSONX_MISSING;
}

enum jsonx_rc jsonx_get_string(json_t *obj, const char *key, int required, const char **out,
                               size_t max_len, struct jsonx_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return missing(key, required, err);
    if (!json_is_string(v)) {
        set_err(err, key, "field '%s' must be a string%s", key, NULL);
        return JSONX_BAD;
    }
    if (max_len && json_string_length(v) > max_len) {
        char lim[48];
        snprintf(lim, sizeof lim, " (at most %zu bytes)", max_len);
        set_err(err, key, "field '%s' is too long%s", key, lim);
        return JSONX_BAD;
    }
    if (strlen(json_string_value(v)) != json_string_length(v)) {
        set_err(err, key, "field '%s' must not contain NUL characters%s", key, NULL);
        return JSONX_BAD;
    }
    *out = json_string_value(v);
    return JSONX_OK;
}

enum jsonx_rc jsonx_get_int(json_t *obj, const char *key, int required, int64_t min, int64_t max,
                            int64_t *out, struct jsonx_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return missing(key, required, err);
    if (!json_is_integer(v)) {
        set_err(err, key, "field '%s' must be an integer%s", key, NULL);
        return JSONX_BAD;
    }
    json_int_t i = json_integer_value(v);
    if (i < min || i > max) {
        char range[96];
        snprintf(range, sizeof range, " (between %lld and %lld)", (long long)min, (long long)max);
        set_err(err, key, "field '%s' is out of range%s", key, range);
        return JSONX_BAD;
    }
    *out = (int64_t)i;
    return JSONX_OK;
}

enum jsonx_rc jsonx_get_number(json_t *obj, const char *key, int required, double min, double max,
                               double *out, struct jsonx_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return missing(key, required, err);
    if (!json_is_number(v)) {
        set_err(err, key, "field '%s' must be a number%s", key, NULL);
        return JSONX_BAD;
    }
    double d = json_number_value(v);
    if (!isfinite(d) || d < min || d > max) {
        char range[96];
        snprintf(range, sizeof range, " (between %g and %g)", min, max);
        set_err(err, key, "field '%s' is out of range%s", key, range);
        return JSONX_BAD;
    }
    *out = d;
    return JSONX_OK;
}

enum jsonx_rc jsonx_get_bool(json_t *obj, const char *key, int required, int *out,
                             struct jsonx_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return missing(key, required, err);
    if (!json_is_boolean(v)) {
        set_err(err, key, "field '%s' must be a boolean%s", key, NULL);
        return JSONX_BAD;
    }
    *out = json_is_true(v);
    return JSONX_OK;
}

int jsonx_printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return 0;
    return 1;
}

char *jsonx_dump(const json_t *v)
{
    return json_dumps(v, JSON_COMPACT);
}
