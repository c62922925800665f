/* Runtime cgroups where the machine has a writable cgroup v2 hierarchy (skipped, exit 77, where it
 * has none): a scope is made, a child joins its cgroup through the descriptor cg_prepare opened
 * (as a runtime does between fork and exec), cg_has sees it and not us, cg_kill_all kills it, and
 * the cgroup and scope are removed. Also: "off" and a root that is not cgroup2 use no cgroups. */
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cgroup.h"
#include "check.h"
#include "log.h"
#include "util.h"

int main(void)
{
    log_init("test_agent_cgroup", "error");
    struct cg c;
    cg_init(&c, "off", "x");
    CHECK_STR_EQ(c.dir, "");
    cg_init(&c, "/tmp", "x"); /* not a cgroup2 mount */
    CHECK_STR_EQ(c.dir, "");
    char path[4096];
    CHECK_INT_EQ(cg_prepare(&c, "r-1", 0, 0, path, sizeof path), -1);

    char scope[64];
    snprintf(scope, sizeof scope, "test-%d", (int)getpid());
    cg_init(&c, "", scope);
    if (!c.dir[0]) {
        fprintf(stderr, "no writable cgroup v2 here: skipped\n");
        return 77;
    }
    int fd = cg_prepare(&c, "rep-1", 256 << 20, 500, path, sizeof path);
    CHECK(fd >= 0);
    pid_t pid = fork();
    if (pid == 0) {
        if (write(fd, "0", 1) != 1) _exit(3);
        pause();
        _exit(0);
    }
    close(fd);
    int in = 0;
    for (int i = 0; i < 200 && !(in = cg_has(path, pid)); i++)
        util_sleep_ms(10);
    CHECK(in);
    CHECK(!cg_has(path, getpid()));
    if (c.memory) {
        char p[4200];
        snprintf(p, sizeof p, "%s/memory.max", path);
        char *v = util_read_file(p, NULL);
        CHECK(v && atoll(v) == 256 << 20);
        free(v);
    }
    CHECK_INT_EQ(cg_kill_all(path), 1);
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    for (int i = 0; i < 100 && cg_has(path, pid); i++)
        util_sleep_ms(10);
    cg_remove(path);
    struct stat sb;
    CHECK(stat(path, &sb) != 0);
    cg_remove(c.dir);
    CHECK(stat(c.dir, &sb) != 0);
    printf("ok\n");
    return 0;
}
