/* log: leveled logging to stderr, shared by every program.
 *
 * Each line carries a time, the level, the program name and the calling thread's context (set with
 * log_set_context(), e.g. "req=req_ab12 acct=3"), so call sites do not repeat it. The level is
 * checked before anything is formatted. ERROR lines also carry file:line: an error is a bug or a
 * broken environment, a WARN is someone else's bad input. */
#ifndef ORP_LOG_H
#define ORP_LOG_H

enum log_level { LOG_LEVEL_DEBUG = 0, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

extern int log_min_level;

void log_init(const char *program, const char *level_name);
/* Sets this thread's context prefix; NULL or "" clears it. Copied. */
void log_set_context(const char *ctx);
void log_write(enum log_level level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define LOG_AT(lvl, ...)                                                                           \
    do {                                                                                           \
        if ((int)(lvl) >= log_min_level) log_write((lvl), __FILE__, __LINE__, __VA_ARGS__);        \
    } while (0)
#define log_debug(...) LOG_AT(LOG_LEVEL_DEBUG, __VA_ARGS__)
#define log_info(...) LOG_AT(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warn(...) LOG_AT(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_error(...) LOG_AT(LOG_LEVEL_ERROR, __VA_ARGS__)

#endif
