/* labels: see labels.h. */
#include "labels.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* 1 when s[0..n) is n characters of alnum or extra, beginning with alnum when n > 0. */
static int charset_ok(const char *s, size_t n, const char *extra)
{
    for (size_t i = 0; i < n; i++)
        if (!alnum(s[i]) && (i == 0 || !s[i] || !strchr(extra, s[i]))) return 0;
    return 1;
}

__attribute__((format(printf, 3, 4))) static int fail(struct jsonx_err *err, const char *param,
                                                      const char *fmt, ...)
{
    va_list ap;
    snprintf(err->param, sizeof err->param, "%s", param);
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return -1;
}

int labels_check(const json_t *v, const char *param, struct jsonx_err *err)
{
    if (!json_is_object(v))
        return fail(err, param, "field '%s' must be an object of label names to values", param);
    if (json_object_size(v) > LABELS_MAX)
        return fail(err, param, "field '%s' has more than %d labels", param, LABELS_MAX);
    const char *k;
    json_t *val;
    json_object_foreach((json_t *)v, k, val)
    {
        size_t kn = strlen(k);
        if (kn == 0 || kn > LABELS_KEY_MAX || !charset_ok(k, kn, "._/-"))
            return fail(err, param,
                        "field '%s': label name '%.63s' must be 1 to 63 letters, digits, '.', "
                        "'_', '/' or '-', beginning with a letter or digit",
                        param, k);
        if (!json_is_string(val))
            return fail(err, param, "field '%s': the value of label '%s' must be a string", param,
                        k);
        const char *s = json_string_value(val);
        size_t vn = json_string_length(val);
        if (vn > LABELS_VALUE_MAX || strlen(s) != vn || !charset_ok(s, vn, "._-"))
            return fail(err, param,
                        "field '%s': the value of label '%s' must be at most 63 letters, digits, "
                        "'.', '_' or '-', beginning with a letter or digit",
                        param, k);
    }
    return 0;
}

json_t *labels_parse(const char *spec, struct jsonx_err *err)
{
    json_t *o = json_object();
    char key[LABELS_KEY_MAX + 2];
    for (const char *p = spec; o && *p;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', n);
        if (!eq) {
            snprintf(err->param, sizeof err->param, "labels");
            snprintf(err->message, sizeof err->message,
                     "labels: '%.*s' is not name=value (give \"k=v,k2=v2\")",
                     (int)(n > 80 ? 80 : n), p);
            json_decref(o);
            return NULL;
        }
        /* Longer than allowed is cut to one past the limit, so that labels_check says so. */
        size_t kn = (size_t)(eq - p) > LABELS_KEY_MAX + 1 ? LABELS_KEY_MAX + 1 : (size_t)(eq - p);
        memcpy(key, p, kn);
        key[kn] = 0;
        char val[LABELS_VALUE_MAX + 2];
        size_t vn = n - kn - 1 > LABELS_VALUE_MAX + 1 ? LABELS_VALUE_MAX + 1 : n - kn - 1;
        memcpy(val, eq + 1, vn);
        val[vn] = 0;
        json_t *js = json_string(val);
        if (!js || json_object_set_new(o, key, js) != 0) { /* not UTF-8 */
            snprintf(err->param, sizeof err->param, "labels");
            snprintf(err->message, sizeof err->message, "labels: '%s' is not valid text", key);
            json_decref(o);
            return NULL;
        }
        p += n;
        if (*p == ',') p++;
    }
    if (o && labels_check(o, "labels", err) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}
