/* cfg: see cfg.h. */
#include "cfg.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int set_value(const struct cfg_opt *o, void *target, const char *val, char *err,
                     size_t errlen)
{
    char *base = target;
    switch (o->type) {
    case CFG_STRING:
        *(const char **)(base + o->offset) = val;
        return 0;
    case CFG_INT: {
        char *end;
        errno = 0;
        long long v = strtoll(val, &end, 10);
        if (errno || end == val || *end) {
            snprintf(err, errlen, "option --%s: '%s' is not an integer", o->name, val);
            return -1;
        }
        *(int64_t *)(base + o->offset) = v;
        return 0;
    }
    case CFG_BOOL:
        if (!strcmp(val, "1") || !strcmp(val, "true") || !strcmp(val, "yes"))
            *(int *)(base + o->offset) = 1;
        else if (!strcmp(val, "0") || !strcmp(val, "false") || !strcmp(val, "no"))
            *(int *)(base + o->offset) = 0;
        else {
            snprintf(err, errlen, "option --%s: '%s' is not a boolean", o->name, val);
            return -1;
        }
        return 0;
    }
    return -1;
}

static void env_name(char *out, size_t n, const char *prefix, const char *name)
{
    size_t i = 0;
    for (const char *p = prefix; *p && i + 1 < n; p++)
        out[i++] = *p;
    if (i + 1 < n) out[i++] = '_';
    for (const char *p = name; *p && i + 1 < n; p++)
        out[i++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    out[i] = '\0';
}

int cfg_parse(const struct cfg_opt *opts, size_t nopts, void *target, const char *env_prefix,
              int argc, char **argv, int first, char *err, size_t errlen)
{
    for (size_t i = 0; i < nopts; i++) {
        const char *v = opts[i].def;
        char en[128];
        env_name(en, sizeof en, env_prefix, opts[i].name);
        if (getenv(en)) v = getenv(en);
        if (v) {
            if (set_value(&opts[i], target, v, err, errlen) != 0) return -1;
        } else if (opts[i].type == CFG_STRING) {
            *(const char **)((char *)target + opts[i].offset) = NULL;
        }
    }
    for (int a = first; a < argc; a++) {
        const char *arg = argv[a];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) return 1;
        if (strncmp(arg, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument '%s'", arg);
            return -1;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const struct cfg_opt *o = NULL;
        for (size_t i = 0; i < nopts; i++)
            if (strlen(opts[i].name) == nlen && !strncmp(opts[i].name, name, nlen)) o = &opts[i];
        if (!o) {
            snprintf(err, errlen, "unknown option '--%.*s' (see --help)", (int)nlen, name);
            return -1;
        }
        const char *val;
        if (eq)
            val = eq + 1;
        else if (o->type == CFG_BOOL)
            val = "true";
        else if (a + 1 < argc)
            val = argv[++a];
        else {
            snprintf(err, errlen, "option --%s needs a value", o->name);
            return -1;
        }
        if (set_value(o, target, val, err, errlen) != 0) return -1;
    }
    return 0;
}

void cfg_print_help(FILE *out, const char *usage, const struct cfg_opt *opts, size_t nopts,
                    const char *env_prefix)
{
    fprintf(out, "%s\n\nOptions (each also read from the environment as %s_NAME):\n", usage,
            env_prefix);
    for (size_t i = 0; i < nopts; i++) {
        const char *t = opts[i].type == CFG_INT ? "N" : opts[i].type == CFG_BOOL ? "" : "S";
        fprintf(out, "  --%s %-3s %s", opts[i].name, t, opts[i].help);
        if (opts[i].def) fprintf(out, " [default: %s]", opts[i].def);
        fputc('\n', out);
    }
}

void cfg_print_effective(FILE *out, const struct cfg_opt *opts, size_t nopts, const void *target)
{
    const char *base = target;
    for (size_t i = 0; i < nopts; i++) {
        const struct cfg_opt *o = &opts[i];
        switch (o->type) {
        case CFG_STRING: {
            const char *s = *(const char *const *)(base + o->offset);
            /* Secrets are never printed. */
            int secret = strstr(o->name, "token") || strstr(o->name, "secret") ||
                         strstr(o->name, "password");
            fprintf(out, "%s = %s\n", o->name, !s ? "(unset)" : secret ? "(set)" : s);
            break;
        }
        case CFG_INT:
            fprintf(out, "%s = %lld\n", o->name, (long long)*(const int64_t *)(base + o->offset));
            break;
        case CFG_BOOL:
            fprintf(out, "%s = %s\n", o->name, *(const int *)(base + o->offset) ? "true" : "false");
            break;
        }
    }
}
