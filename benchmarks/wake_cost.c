/* What one timed wake-up costs this machine's CPU, with no runtime around
 * it: the floor under an open-model pacer that wakes once per arrival
 * (issue 11, item 2; agent/src/worker/open.rs explains the batch window it
 * led to).
 *
 *   gcc -O2 -o /tmp/wake_cost benchmarks/wake_cost.c && /tmp/wake_cost
 *
 * For each period, sleeps to absolute instants `period` apart (timer slack
 * 1 ns, as the agent's workers set it) and prints the process's CPU time
 * (user + sys, getrusage) per wake-up and how late the wake-ups were. A
 * bare-metal Linux pays ~1–3 µs; a VM pays its timer and idle exits too. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>

static double cpu_s(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

static long ns_between(struct timespec a, struct timespec b) {
    return (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
}

int main(void) {
    const long periods_us[] = {20, 50, 200, 1000};
    prctl(PR_SET_TIMERSLACK, 1);
    printf("| period | wake-ups | CPU µs / wake-up | mean lateness µs |\n|---|---|---|---|\n");
    for (size_t p = 0; p < sizeof periods_us / sizeof periods_us[0]; p++) {
        long period_ns = periods_us[p] * 1000;
        int n = (int)(2000000000L / period_ns); /* 2 s of wake-ups */
        if (n > 50000) n = 50000;
        struct timespec due, now;
        clock_gettime(CLOCK_MONOTONIC, &due);
        double before = cpu_s();
        long late_ns = 0;
        for (int i = 0; i < n; i++) {
            due.tv_nsec += period_ns;
            while (due.tv_nsec >= 1000000000L) { due.tv_nsec -= 1000000000L; due.tv_sec++; }
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &due, NULL);
            clock_gettime(CLOCK_MONOTONIC, &now);
            late_ns += ns_between(due, now);
        }
        double used = cpu_s() - before;
        printf("| %ld µs | %d | %.2f | %.2f |\n", periods_us[p], n, used / n * 1e6, late_ns / (double)n / 1e3);
    }
    return 0;
}
