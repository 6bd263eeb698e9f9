/* The pause program of the CRI tests' sandbox image: the pod's first process, which holds its namespaces and
 * does nothing else. Built with `gcc -static`, so the image needs no libc. It exits on SIGTERM or SIGINT (as
 * PID 1 it would otherwise ignore them) and reaps children it inherits. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) {
    (void)sig;
    _exit(0);
}

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0) {
    }
}

int main(void) {
    signal(SIGTERM, quit);
    signal(SIGINT, quit);
    signal(SIGCHLD, reap);
    for (;;)
        pause();
}
