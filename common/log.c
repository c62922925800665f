/* log: see log.h. Writes whole lines with one fprintf so threads do not interleave mid-line. */
#include "log.h"

#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

int log_min_level = LOG_LEVEL_INFO;
static char log_program[32] = "orp";
static _Thread_local char log_context[160];

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_init(const char *program, const char *level_name)
{
    snprintf(log_program, sizeof log_program, "%s", program);
    if (level_name) {
        for (int i = 0; i < 4; i++)
            if (strcasecmp(level_name, level_names[i]) == 0) log_min_level = i;
    }
}

void log_set_context(const char *ctx)
{
    util_strlcpy(log_context, ctx ? ctx : "", sizeof log_context);
}

void log_write(enum log_level level, const char *file, int line, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);

    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    if (level == LOG_LEVEL_ERROR)
        fprintf(stderr, "%s.%03ldZ %-5s %s %s%s%s (%s:%d)\n", when, ts.tv_nsec / 1000000,
                level_names[level], log_program, log_context, log_context[0] ? " " : "", msg, base,
                line);
    else
        fprintf(stderr, "%s.%03ldZ %-5s %s %s%s%s\n", when, ts.tv_nsec / 1000000,
                level_names[level], log_program, log_context, log_context[0] ? " " : "", msg);
}
