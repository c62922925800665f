/* cfg: configuration as a table. Each program declares one array of struct cfg_opt (name, type,
 * default, help, offset into its config struct); the same table parses the command line and the
 * environment, prints --help and prints the effective configuration. Precedence: default <
 * environment (PREFIX_NAME, dashes as underscores, upper case) < command line (--name value or
 * --name=value; a bool option alone means true). String values are borrowed from argv, the
 * environment or the table, which all outlive the program's use of them. */
#ifndef ORP_CFG_H
#define ORP_CFG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum cfg_type { CFG_STRING, CFG_INT, CFG_BOOL };

struct cfg_opt {
    const char *name; /* without the leading dashes */
    enum cfg_type type;
    const char *def; /* NULL: no default (strings stay NULL, numbers 0) */
    const char *help;
    size_t offset; /* offsetof(struct your_config, field): const char *, int64_t or int */
};

/* Parses argv[first..argc). Returns 0, 1 when --help was asked (help printed), -1 on a bad option
 * (message in err). Positional arguments are an error. */
int cfg_parse(const struct cfg_opt *opts, size_t nopts, void *target, const char *env_prefix,
              int argc, char **argv, int first, char *err, size_t errlen);
void cfg_print_help(FILE *out, const char *usage, const struct cfg_opt *opts, size_t nopts,
                    const char *env_prefix);
void cfg_print_effective(FILE *out, const struct cfg_opt *opts, size_t nopts, const void *target);

#endif
