/*
 * loadgen.c - RTP load generator for rtpproxy-compatible relays.
 *
 * Creates N sessions through the UDP (cookie) control protocol, plays both
 * parties of every session (one UDP socket each on 127.0.0.1, or on ::1 with
 * --ipv6), sends G.711-
 * sized RTP at a fixed packet rate per direction, evenly spread in time,
 * receives what the relay forwards and prints one JSON line with loss,
 * one-way latency percentiles, generator CPU and (optionally) relay CPU.
 *
 * Leg mapping (protocol.md section 4): the port returned by the creating U
 * (leg A) is where the callee sends; the port returned by L (leg B) is where
 * the caller sends. Caller media enters B and leaves A towards the callee's
 * address (from L); callee media enters A and leaves B towards the caller's
 * address (from U).
 *
 * Build: gcc -O2 -Wall -o loadgen loadgen.c
 * Loopback only: the control address must be in 127.0.0.0/8 (control stays IPv4
 * with --ipv6; only the media moves).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x4c47454eu /* "LGEN" */
#define RTP_HDR 12
#define PL_MIN 40 /* our own fields inside the RTP payload */
#define MAXEV 256 /* small: go back to sending often even when replies come in bursts */
#define RBATCH 32
#define SBATCH 64
#define SHARED_ID 0x40000000u
#define MAXPKT 2048
#define CTL_RTX_NS 1000000000LL /* control retransmit interval */
#define CTL_TRIES 6
#define FINE_US 65536u          /* 1 us buckets below this */
#define COARSE_N 10000u         /* then 1 ms buckets up to ~10 s */
#define NBUCKET (FINE_US + COARSE_N + 1)

typedef struct {
    int fd[2];            /* 0 = caller, 1 = callee */
    uint16_t lport[2];    /* our local ports */
    uint16_t port_a;      /* from U: callee sends here */
    uint16_t port_b;      /* from L: caller sends here */
    uint32_t ssrc[2];
    uint16_t rtpseq[2];
    uint32_t rtpts[2];
    uint64_t nseq[2];
    int ok;               /* 1 after U and L succeeded */
} sess_t;

typedef struct {
    uint32_t *b;
    uint64_t n, over;
    uint64_t max_ns;
    double sum_us;
} hist_t;

static volatile sig_atomic_t g_stop;
static char g_tag[40];
static char g_tag_suffix[8]; /* appended to from/to tags: ";1" as Kamailio sends them */
static int g_ctl = -1;

/* Relay control sockets with weights; a session's commands go to the node that Kamailio's
 * rtpproxy module would choose for its call-id (see select_node). */
#define MAXNODES 16
static struct sockaddr_in g_nodes[MAXNODES];
static unsigned g_weights[MAXNODES];
static unsigned g_nnodes;
static uint8_t *g_node_of; /* per session */
static int g_v6; /* --ipv6: the parties and the relay's media on ::1 */

/* The loopback address of the media family, with a port. */
static socklen_t media_loopback(struct sockaddr_storage *sa, uint16_t port)
{
    memset(sa, 0, sizeof *sa);
    if (g_v6) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)sa;
        a6->sin6_family = AF_INET6;
        a6->sin6_addr = in6addr_loopback;
        a6->sin6_port = htons(port);
        return sizeof *a6;
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)sa;
    a4->sin_family = AF_INET;
    a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a4->sin_port = htons(port);
    return sizeof *a4;
}

/* The port of an IPv4 or IPv6 address (same offset in both). */
static uint16_t sa_port(const struct sockaddr_storage *sa)
{
    return ntohs(((const struct sockaddr_in *)sa)->sin_port);
}

static void on_sig(int s) { (void)s; g_stop = 1; }

static inline int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline int64_t real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *msg)
{
    fprintf(stderr, "loadgen: %s: %s\n", msg, strerror(errno));
    printf("{\"error\": \"%s\"}\n", msg);
    exit(2);
}

static void hist_init(hist_t *h)
{
    memset(h, 0, sizeof(*h));
    h->b = calloc(NBUCKET, sizeof(uint32_t));
    if (!h->b) die("calloc");
}

static inline void hist_add(hist_t *h, int64_t ns)
{
    if (ns < 0) ns = 0;
    uint64_t us = (uint64_t)ns / 1000u;
    uint32_t idx;
    if (us < FINE_US) idx = (uint32_t)us;
    else {
        uint64_t c = (us - FINE_US) / 1000u;
        idx = FINE_US + (uint32_t)(c < COARSE_N ? c : COARSE_N);
    }
    h->b[idx]++;
    h->n++;
    h->sum_us += (double)ns / 1000.0;
    if ((uint64_t)ns > h->max_ns) h->max_ns = (uint64_t)ns;
}

static double hist_pct(const hist_t *h, double p)
{
    if (h->n == 0) return -1;
    uint64_t want = (uint64_t)((double)h->n * p / 100.0);
    if (want >= h->n) want = h->n - 1;
    uint64_t acc = 0;
    for (uint32_t i = 0; i < NBUCKET; i++) {
        acc += h->b[i];
        if (acc > want) {
            double v = i < FINE_US ? (double)i : (double)FINE_US + (double)(i - FINE_US) * 1000.0;
            double mx = (double)h->max_ns / 1000.0;
            return v > mx ? mx : v;
        }
    }
    return (double)h->max_ns / 1000.0;
}

static void hist_json(FILE *out, const hist_t *h)
{
    fprintf(out, "{\"n\": %" PRIu64 ", \"mean\": %.1f, \"p50\": %.0f, \"p90\": %.0f, \"p99\": %.0f, "
               "\"p999\": %.0f, \"max\": %.0f}",
            h->n, h->n ? h->sum_us / (double)h->n : -1.0, hist_pct(h, 50), hist_pct(h, 90),
            hist_pct(h, 99), hist_pct(h, 99.9), h->n ? (double)h->max_ns / 1000.0 : -1.0);
}

/* ---- relay CPU accounting via /proc ---- */

#define MAXPIDS 64
static int g_pids[MAXPIDS];
static int g_npids;

static int read_ppid(int pid)
{
    char p[64], buf[1024];
    snprintf(p, sizeof p, "/proc/%d/stat", pid);
    int fd = open(p, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    char *r = strrchr(buf, ')');
    if (!r) return -1;
    char st;
    int ppid;
    if (sscanf(r + 2, "%c %d", &st, &ppid) != 2) return -1;
    return ppid;
}

/* Add a relay process plus any descendants (a relay may fork workers). */
static void find_relay_pids(int root)
{
    if (g_npids >= MAXPIDS) return;
    int first = g_npids;
    g_pids[g_npids++] = root;
    DIR *d = opendir("/proc");
    if (!d) return;
    int all[32768];
    int par[32768];
    int na = 0;
    struct dirent *e;
    while ((e = readdir(d)) && na < 32768) {
        if (!isdigit((unsigned char)e->d_name[0])) continue;
        int pid = atoi(e->d_name);
        int pp = read_ppid(pid);
        if (pp > 0) { all[na] = pid; par[na] = pp; na++; }
    }
    closedir(d);
    for (int changed = 1, rounds = 0; changed && rounds < 16; rounds++) {
        changed = 0;
        for (int i = 0; i < na; i++) {
            int in = 0, pin = 0;
            for (int j = first; j < g_npids; j++) {
                if (g_pids[j] == all[i]) in = 1;
                if (g_pids[j] == par[i]) pin = 1;
            }
            if (!in && pin && g_npids < MAXPIDS) { g_pids[g_npids++] = all[i]; changed = 1; }
        }
    }
}

/* utime+stime (clock ticks -> seconds) of the process, all its threads included. */
static double proc_cpu_s(int pid, double *user_s)
{
    char p[64], buf[2048];
    snprintf(p, sizeof p, "/proc/%d/stat", pid);
    int fd = open(p, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *r = strrchr(buf, ')');
    if (!r) return 0;
    /* fields after ')': 3=state ... 14=utime 15=stime */
    unsigned long long ut = 0, stt = 0;
    char *s = r + 2;
    for (int f = 3; f < 14 && s; f++) { s = strchr(s, ' '); if (s) s++; }
    if (!s || sscanf(s, "%llu %llu", &ut, &stt) != 2) return 0;
    if (user_s) *user_s += (double)ut / (double)sysconf(_SC_CLK_TCK);
    return (double)(ut + stt) / (double)sysconf(_SC_CLK_TCK);
}

/* sum_exec_runtime over all threads (ns precision), from /proc/PID/task/TID/schedstat. */
static double proc_sched_s(int pid)
{
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/task", pid);
    DIR *d = opendir(p);
    if (!d) return 0;
    double tot = 0;
    struct dirent *e;
    int guard = 0;
    while ((e = readdir(d)) && guard++ < 4096) {
        if (!isdigit((unsigned char)e->d_name[0])) continue;
        char q[320], buf[256];
        snprintf(q, sizeof q, "/proc/%d/task/%s/schedstat", pid, e->d_name);
        int fd = open(q, O_RDONLY);
        if (fd < 0) continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0) continue;
        buf[n] = 0;
        unsigned long long rt = 0;
        if (sscanf(buf, "%llu", &rt) == 1) tot += (double)rt / 1e9;
    }
    closedir(d);
    return tot;
}

static void relay_cpu(double *ticks_s, double *sched_s, double *user_s)
{
    *ticks_s = 0;
    *sched_s = 0;
    *user_s = 0;
    for (int i = 0; i < g_npids; i++) {
        *ticks_s += proc_cpu_s(g_pids[i], user_s);
        *sched_s += proc_sched_s(g_pids[i]);
    }
}

#define MAXCPU 64
/* A snapshot of everything CPU-related we compare across the measured window. */
typedef struct {
    double relay, relay_sched, relay_user, gen, gen_user, all_user;
    double busy[MAXCPU];
    int ncpu;
} snap_t;

/* /proc/stat: user+nice of the whole machine, and busy time per CPU (seconds). */
static void stat_cpus(snap_t *sn)
{
    FILE *f = fopen("/proc/stat", "r");
    sn->ncpu = 0;
    sn->all_user = 0;
    if (!f) return;
    char line[512];
    double hz = (double)sysconf(_SC_CLK_TCK);
    for (int guard = 0; fgets(line, sizeof line, f) && guard < 1000; guard++) {
        if (strncmp(line, "cpu", 3) != 0) break;
        unsigned long long u, n, sy, id, io, irq, sirq, st;
        int cpu = -1;
        char *p = line + 3;
        if (*p != ' ') cpu = (int)strtol(p, &p, 10);
        if (sscanf(p, "%llu %llu %llu %llu %llu %llu %llu %llu", &u, &n, &sy, &id, &io, &irq, &sirq,
                   &st) != 8)
            continue;
        if (cpu < 0) sn->all_user = (double)(u + n) / hz;
        else if (cpu < MAXCPU) {
            sn->busy[cpu] = (double)(u + n + sy + irq + sirq + st) / hz;
            if (cpu + 1 > sn->ncpu) sn->ncpu = cpu + 1;
        }
    }
    fclose(f);
}

static double self_cpu_s(double *user_s)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    if (user_s) *user_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/*
 * Socket drop counters from /proc/net/udp (udp6 with --ipv6): sum of "drops" for
 * loopback sockets
 * whose local port has role 1 (ours) or 2 (relay media ports).
 */
static void udp_drops(const uint8_t *role, uint64_t *gen, uint64_t *relay)
{
    *gen = 0;
    *relay = 0;
    FILE *f = fopen(g_v6 ? "/proc/net/udp6" : "/proc/net/udp", "r");
    if (!f) return;
    /* the local address as the kernel prints it: 32-bit words in host byte order */
    const char *loopback = g_v6 ? "00000000000000000000000001000000" : "0100007F";
    char line[512];
    for (long guard = 0; fgets(line, sizeof line, f) && guard < 2000000; guard++) {
        char a[40];
        unsigned p;
        unsigned long long drops;
        char *c = strchr(line, ':');
        if (!c || sscanf(c + 1, " %39[0-9A-Fa-f]:%x", a, &p) != 2 || strcmp(a, loopback) || p > 65535)
            continue;
        /* drops is the last field (lines carry trailing blanks) */
        size_t len = strlen(line);
        while (len && isspace((unsigned char)line[len - 1])) line[--len] = 0;
        char *last = strrchr(line, ' ');
        if (!last || sscanf(last, "%llu", &drops) != 1) continue;
        if (role[p] == 1) *gen += drops;
        else if (role[p] == 2) *relay += drops;
    }
    fclose(f);
}

static void snapshot(snap_t *sn, int relay_pid)
{
    memset(sn, 0, sizeof *sn);
    if (relay_pid > 0) relay_cpu(&sn->relay, &sn->relay_sched, &sn->relay_user);
    sn->gen = self_cpu_s(&sn->gen_user);
    stat_cpus(sn);
}

/* ---- control protocol ---- */

static void ctl_send(const char *cmd, unsigned node)
{
    const struct sockaddr_in *to = &g_nodes[node];
    ssize_t r = sendto(g_ctl, cmd, strlen(cmd), 0, (const struct sockaddr *)to, sizeof *to);
    if (r < 0 && errno != EAGAIN && errno != ENOBUFS && errno != ECONNREFUSED)
        fprintf(stderr, "loadgen: control send: %s\n", strerror(errno));
}

/* Parse "<tag>-<T><idx> <body>"; returns 0 and fills type/idx/body if the cookie is ours. */
static int ctl_parse(char *buf, char *type, unsigned *idx, char **body)
{
    size_t tl = strlen(g_tag);
    if (strncmp(buf, g_tag, tl) != 0 || buf[tl] != '-') return -1;
    *type = buf[tl + 1];
    char *end;
    unsigned long v = strtoul(buf + tl + 2, &end, 10);
    if (*end != ' ') return -1;
    *idx = (unsigned)v;
    *body = end + 1;
    char *nl = strpbrk(*body, "\r\n");
    if (nl) *nl = 0;
    return 0;
}

static void fmt_cmd(char *out, size_t sz, char type, unsigned i, const sess_t *s)
{
    /* U6/L6: the party's address is IPv6 and the relay answers with an IPv6 media port */
    const char *family = g_v6 ? "6" : "", *party = g_v6 ? "::1" : "127.0.0.1";
    switch (type) {
    case 'U':
        snprintf(out, sz, "%s-U%u U%s %s-%u %s %u ft%u%s", g_tag, i, family, g_tag, i, party, s->lport[0],
                 i, g_tag_suffix);
        break;
    case 'L':
        snprintf(out, sz, "%s-L%u L%s %s-%u %s %u ft%u%s tt%u%s", g_tag, i, family, g_tag, i, party,
                 s->lport[1], i, g_tag_suffix, i, g_tag_suffix);
        break;
    case 'D':
        snprintf(out, sz, "%s-D%u D %s-%u ft%u%s tt%u%s", g_tag, i, g_tag, i, i, g_tag_suffix, i,
                 g_tag_suffix);
        break;
    }
}

/*
 * The node Kamailio's rtpproxy module picks for a call-id when every node is up
 * (select_rtpp_node): the byte sum of the call-id, modulo 256, walked down the weights.
 */
static unsigned select_node(const char *callid)
{
    if (g_nnodes == 1) return 0;
    unsigned sum = 0, total = 0;
    for (const char *c = callid; *c; c++) sum += (unsigned)*c;
    sum &= 0xff;
    for (unsigned n = 0; n < g_nnodes; n++) total += g_weights[n];
    unsigned cut = sum % total;
    for (unsigned n = 0; n < g_nnodes; n++) {
        if (cut < g_weights[n]) return n;
        cut -= g_weights[n];
    }
    return 0;
}

/*
 * Run one kind of command (U, L or D) for every session that needs it, with at
 * most `window` outstanding; retransmit with the same cookie. Bounded by
 * deadline_ns and CTL_TRIES per command. Returns the number of failures.
 */
static unsigned ctl_phase(char type, sess_t *ss, unsigned n, unsigned window, int64_t deadline_ns)
{
    unsigned *outq = calloc(window, sizeof(unsigned));
    int64_t *sent_at = calloc(n, sizeof(int64_t));
    uint8_t *tries = calloc(n, 1);
    uint8_t *done = calloc(n, 1);
    if (!outq || !sent_at || !tries || !done) die("calloc");
    unsigned next = 0, nout = 0, ndone = 0, fails = 0;
    char cmd[512], buf[1500];
    /* skip sessions that do not need this command */
    unsigned need = 0;
    for (unsigned i = 0; i < n; i++) {
        int skip = (type == 'L' && !ss[i].port_a) || (type == 'D' && !ss[i].port_a);
        if (skip) done[i] = 1; else need++;
    }
    while (ndone < need && !g_stop) {
        int64_t t = now_ns();
        if (t > deadline_ns) break;
        while (nout < window && next < n) {
            if (done[next]) { next++; continue; }
            fmt_cmd(cmd, sizeof cmd, type, next, &ss[next]);
            ctl_send(cmd, g_node_of[next]);
            sent_at[next] = t;
            tries[next] = 1;
            outq[nout++] = next++;
        }
        for (unsigned k = 0; k < nout;) {
            unsigned i = outq[k];
            if (done[i]) { outq[k] = outq[--nout]; continue; }
            if (t - sent_at[i] > CTL_RTX_NS) {
                if (tries[i] >= CTL_TRIES) {
                    done[i] = 1; ndone++; fails++;
                    outq[k] = outq[--nout];
                    continue;
                }
                fmt_cmd(cmd, sizeof cmd, type, i, &ss[i]);
                ctl_send(cmd, g_node_of[i]);
                sent_at[i] = t;
                tries[i]++;
            }
            k++;
        }
        struct pollfd pf = {.fd = g_ctl, .events = POLLIN};
        if (poll(&pf, 1, 20) <= 0) continue;
        for (int guard = 0; guard < 4096; guard++) {
            ssize_t r = recv(g_ctl, buf, sizeof buf - 1, MSG_DONTWAIT);
            if (r <= 0) break;
            buf[r] = 0;
            char rt;
            unsigned idx;
            char *body;
            if (ctl_parse(buf, &rt, &idx, &body) || rt != type || idx >= n || done[idx]) continue;
            done[idx] = 1;
            ndone++;
            if (type == 'D') {
                if (body[0] != '0') fails++;
                continue;
            }
            unsigned long port = strtoul(body, NULL, 10);
            if (body[0] == 'E' || port == 0 || port > 65535) {
                fails++;
                if (fails <= 5) fprintf(stderr, "loadgen: %c %u failed: %s\n", type, idx, body);
                continue;
            }
            if (type == 'U') ss[idx].port_a = (uint16_t)port;
            else { ss[idx].port_b = (uint16_t)port; ss[idx].ok = 1; }
        }
    }
    if (ndone < need) fails += need - ndone;
    free(outq); free(sent_at); free(tries); free(done);
    return fails;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen --ctl 127.0.0.1:PORT[=WEIGHT] --sessions N [--duration S] [--warmup S]\n"
            "               [--drain S] [--rate PPS] [--payload BYTES] [--relay-pid PID]\n"
            "               [--setup-timeout S] [--window W] [--tag STR] [--tick-us US]\n"
            "               [--shared K]  (K>0: 2K sockets shared by all sessions)\n"
            "               [--tag-suffix STR]  (appended to from/to tags, e.g. \";1\")\n"
            "               [--ipv6]  (media on ::1: U6/L6, relays need -6 ::1; not with --shared)\n"
            "--ctl and --relay-pid repeat for several relays: sessions are spread over the\n"
            "--ctl nodes by call-id as Kamailio's rtpproxy module does; CPU sums all pids.\n");
    exit(1);
}

int main(int argc, char **argv)
{
    const char *ctls[MAXNODES];
    unsigned nctl = 0;
    unsigned nsess = 100, window = 64, payload = 160;
    double duration = 10, warmup = 1, drain = 1, rate = 50, setup_to = 120;
    int relay_pid = 0;
    int64_t tick_ns = 1000000; /* packets due within one tick are sent together */
    unsigned shared = 0;       /* 0: two sockets per session; K: 2K sockets shared by all */
    static struct option lo[] = {
        {"ctl", 1, 0, 'c'},      {"sessions", 1, 0, 'n'},      {"duration", 1, 0, 'd'},
        {"warmup", 1, 0, 'w'},   {"drain", 1, 0, 'r'},         {"rate", 1, 0, 'R'},
        {"payload", 1, 0, 'p'},  {"relay-pid", 1, 0, 'P'},     {"setup-timeout", 1, 0, 's'},
        {"window", 1, 0, 'W'},   {"tag", 1, 0, 't'},           {"tick-us", 1, 0, 'T'},
        {"shared", 1, 0, 'S'},   {"tag-suffix", 1, 0, 'X'},    {"ipv6", 0, 0, '6'},
        {0, 0, 0, 0}};
    int roots[MAXPIDS];
    int nroots = 0;
    g_tag[0] = 0;
    int o;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 'c':
            if (nctl == MAXNODES) usage();
            ctls[nctl++] = optarg;
            break;
        case 'X': snprintf(g_tag_suffix, sizeof g_tag_suffix, "%s", optarg); break;
        case 'n': nsess = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'r': drain = atof(optarg); break;
        case 'R': rate = atof(optarg); break;
        case 'p': payload = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'P':
            if (nroots < MAXPIDS) roots[nroots++] = atoi(optarg);
            relay_pid = 1;
            break;
        case 's': setup_to = atof(optarg); break;
        case 'W': window = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'S': shared = (unsigned)strtoul(optarg, NULL, 10); break;
        case '6': g_v6 = 1; break;
        case 'T': tick_ns = (int64_t)(atof(optarg) * 1000.0); break;
        case 't': snprintf(g_tag, sizeof g_tag, "%s", optarg); break;
        default: usage();
        }
    }
    if (!nctl || nsess == 0 || nsess > 100000 || rate <= 0 || rate > 1000 || duration <= warmup ||
        duration > 3600 || tick_ns < 0 || tick_ns > 10000000 || drain < 0 || drain > 60 || window == 0 || window > 4096 || shared > 4096)
        usage();
    if (g_v6 && shared) {
        /* the shared sockets' per-message addresses are IPv4 */
        fprintf(stderr, "loadgen: --ipv6 does not work with --shared\n");
        return 1;
    }
    if (shared > nsess) shared = nsess;
    if (payload < PL_MIN) payload = PL_MIN;
    if (payload > MAXPKT - RTP_HDR) payload = MAXPKT - RTP_HDR;
    for (char *c = g_tag; *c; c++)
        if (!isalnum((unsigned char)*c)) *c = 'x';
    if (!g_tag[0]) snprintf(g_tag, sizeof g_tag, "lg%x%llx", (unsigned)getpid(), (unsigned long long)(now_ns() & 0xffffff));

    /* control addresses: loopback only, each HOST:PORT with an optional =WEIGHT */
    for (unsigned n = 0; n < nctl; n++) {
        char host[64];
        const char *ctl = ctls[n];
        const char *colon = strrchr(ctl, ':');
        if (!colon || (size_t)(colon - ctl) >= sizeof host) usage();
        memcpy(host, ctl, (size_t)(colon - ctl));
        host[colon - ctl] = 0;
        const char *eq = strchr(colon, '=');
        g_weights[n] = eq ? (unsigned)strtoul(eq + 1, NULL, 10) : 1;
        if (g_weights[n] == 0 || g_weights[n] > 1000) usage();
        struct sockaddr_in *a = &g_nodes[n];
        memset(a, 0, sizeof *a);
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)atoi(colon + 1));
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1) usage();
        if ((ntohl(a->sin_addr.s_addr) >> 24) != 127) {
            fprintf(stderr, "loadgen: control address must be loopback (127.0.0.0/8)\n");
            return 1;
        }
    }
    g_nnodes = nctl;

    signal(SIGINT, on_sig);
    signal(SIGTERM, on_sig);
    signal(SIGPIPE, SIG_IGN);

    /* file descriptors: 2 per session + a few */
    {
        struct rlimit rl;
        rlim_t need = (rlim_t)nsess * 2 + 64;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < need) {
            if (rl.rlim_max < need) rl.rlim_max = need;
            rl.rlim_cur = need;
            if (setrlimit(RLIMIT_NOFILE, &rl) != 0) die("setrlimit(RLIMIT_NOFILE)");
        }
    }

    g_ctl = socket(AF_INET, SOCK_DGRAM, 0);
    if (g_ctl < 0) die("socket");
    {
        int sz = 4 << 20;
        setsockopt(g_ctl, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
        struct sockaddr_in la = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        if (bind(g_ctl, (struct sockaddr *)&la, sizeof la)) die("bind control");
    }

    sess_t *ss = calloc(nsess, sizeof(sess_t));
    g_node_of = calloc(nsess, 1);
    if (!ss || !g_node_of) die("calloc");
    unsigned per_node[MAXNODES] = {0};
    for (unsigned i = 0; i < nsess; i++) {
        char callid[64];
        snprintf(callid, sizeof callid, "%s-%u", g_tag, i);
        g_node_of[i] = (uint8_t)select_node(callid);
        per_node[g_node_of[i]]++;
    }
    srandom((unsigned)(now_ns() ^ getpid()));
    /* shared mode: 2*shared sockets in all, session i uses socket i % shared on each side */
    int *sfd = calloc(2 * (shared ? shared : 1), sizeof(int));
    uint16_t *sport = calloc(2 * (shared ? shared : 1), sizeof(uint16_t));
    if (!sfd || !sport) die("calloc");
    for (unsigned i = 0; i < nsess; i++) {
        for (int d = 0; d < 2; d++) {
            ss[i].ssrc[d] = (uint32_t)random() | 1u;
            ss[i].rtpseq[d] = (uint16_t)random();
            ss[i].rtpts[d] = (uint32_t)random();
            if (shared && i >= shared) {
                ss[i].fd[d] = sfd[d * shared + i % shared];
                ss[i].lport[d] = sport[d * shared + i % shared];
                continue;
            }
            int fd = socket(g_v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
            if (fd < 0) die("socket (raise RLIMIT_NOFILE?)");
            struct sockaddr_storage la;
            socklen_t sl = media_loopback(&la, 0);
            if (bind(fd, (struct sockaddr *)&la, sl)) die("bind media");
            int one = 1; /* kernel receive timestamps: latency without our own scheduling delay */
            if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one)) die("SO_TIMESTAMPNS");
            sl = sizeof la;
            getsockname(fd, (struct sockaddr *)&la, &sl);
            ss[i].fd[d] = fd;
            ss[i].lport[d] = sa_port(&la);
            if (shared) {
                int sz = 8 << 20; /* many streams share this socket */
                if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof sz))
                    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
                sfd[d * shared + i] = fd;
                sport[d * shared + i] = ss[i].lport[d];
            }
        }
    }

    for (int r = 0; r < nroots; r++) find_relay_pids(roots[r]);

    /* ---- setup ---- */
    int64_t t_setup0 = now_ns();
    int64_t deadline = t_setup0 + (int64_t)(setup_to * 1e9);
    unsigned fail_u = ctl_phase('U', ss, nsess, window, deadline);
    unsigned fail_l = ctl_phase('L', ss, nsess, window, deadline);
    double setup_s = (double)(now_ns() - t_setup0) / 1e9;

    unsigned nact = 0;
    for (unsigned i = 0; i < nsess; i++) nact += ss[i].ok ? 1 : 0;
    fprintf(stderr, "loadgen: %u/%u sessions set up in %.2fs (U fail %u, L fail %u)\n", nact, nsess,
            setup_s, fail_u, fail_l);

    /* streams: index s -> session act[s/2], direction s%2 (0: caller->callee) */
    unsigned *act = calloc(nact ? nact : 1, sizeof(unsigned));
    if (!act) die("calloc");
    {
        unsigned k = 0;
        for (unsigned i = 0; i < nsess; i++)
            if (ss[i].ok) act[k++] = i;
    }

    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    for (unsigned j = 0; shared && j < 2 * shared; j++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = SHARED_ID | j};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, sfd[j], &ev)) die("epoll_ctl");
    }
    for (unsigned a = 0; a < nact && !shared; a++) {
        sess_t *s = &ss[act[a]];
        for (int d = 0; d < 2; d++) {
            struct sockaddr_storage ra;
            socklen_t rl = media_loopback(&ra, d == 0 ? s->port_b : s->port_a);
            if (connect(s->fd[d], (struct sockaddr *)&ra, rl)) die("connect media");
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = a * 2 + (unsigned)d};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd[d], &ev)) die("epoll_ctl");
        }
    }
    {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, g_ctl, &ev)) die("epoll_ctl");
    }

    /* ---- media ---- */
    hist_t hist[2], happ[2];
    hist_init(&hist[0]);
    hist_init(&hist[1]);
    hist_init(&happ[0]);
    hist_init(&happ[1]);
    uint64_t no_kts = 0;
    uint64_t sent_meas[2] = {0, 0}, recv_meas[2] = {0, 0}, sent_all = 0, recv_all = 0;
    uint64_t bad = 0, send_err = 0, recv_err = 0, late_sends = 0;
    int64_t max_lag = 0;
    long long g_rel[2] = {-1, -1};
    snap_t sn0, sn1;
    memset(&sn0, 0, sizeof sn0);
    memset(&sn1, 0, sizeof sn1);
    int64_t tw0 = 0, tw1 = 0;

    const uint64_t S = (uint64_t)nact * 2;
    const int64_t period = (int64_t)(1e9 / rate);
    const uint32_t ts_inc = (uint32_t)(8000.0 / rate);
    int64_t t0 = now_ns() + 20000000LL;
    /* packet k (global) is due at t0 + k*period/S */
    uint64_t kmax = S ? (uint64_t)((duration * 1e9) * (double)S / (double)period) : 0;
    uint64_t kwarm = S ? (uint64_t)((warmup * 1e9) * (double)S / (double)period) : 0;
    uint64_t k = 0;
    int in_window = 0, window_done = 0;
    int64_t drain_end = 0;
    uint8_t pkt[MAXPKT];
    memset(pkt, 0xff, sizeof pkt); /* G.711 u-law silence */
    const size_t plen = RTP_HDR + payload;

    struct mmsghdr msgs[RBATCH];
    struct iovec iovs[RBATCH];
    static uint8_t rbuf[RBATCH][MAXPKT];
    static uint64_t rctl[RBATCH][16]; /* aligned cmsg space */
    for (int i = 0; i < RBATCH; i++) {
        iovs[i].iov_base = rbuf[i];
        iovs[i].iov_len = MAXPKT;
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_control = rctl[i];
    }
    /* shared mode send queues */
    unsigned nq = shared ? 2 * shared : 1;
    unsigned *sq_n = calloc(nq, sizeof(unsigned));
    uint8_t *sq_buf = calloc((size_t)nq * SBATCH, plen);
    struct sockaddr_in *sq_addr = calloc((size_t)nq * SBATCH, sizeof(struct sockaddr_in));
    uint8_t *sq_meas = calloc((size_t)nq * SBATCH, 1);
    struct mmsghdr smsg[SBATCH];
    struct iovec siov[SBATCH];
    if (!sq_n || !sq_buf || !sq_addr || !sq_meas) die("calloc");
    for (size_t i = 0; i < (size_t)nq * SBATCH; i++) {
        sq_addr[i].sin_family = AF_INET;
        sq_addr[i].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    }
#define flush_q(qq)                                                                    \
    do {                                                                               \
        unsigned q_ = (qq), n_ = sq_n[q_], d_ = q_ / shared;                           \
        for (unsigned m_ = 0; m_ < n_; m_++) {                                         \
            memset(&smsg[m_], 0, sizeof smsg[m_]);                                     \
            siov[m_].iov_base = sq_buf + ((size_t)q_ * SBATCH + m_) * plen;            \
            siov[m_].iov_len = plen;                                                   \
            smsg[m_].msg_hdr.msg_iov = &siov[m_];                                      \
            smsg[m_].msg_hdr.msg_iovlen = 1;                                           \
            smsg[m_].msg_hdr.msg_name = &sq_addr[q_ * SBATCH + m_];                    \
            smsg[m_].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);                 \
        }                                                                              \
        unsigned done_ = 0;                                                            \
        for (int try_ = 0; done_ < n_ && try_ < 4; try_++) {                          \
            int r_ = sendmmsg(sfd[q_], smsg + done_, n_ - done_, MSG_DONTWAIT);        \
            if (r_ <= 0) { send_err++; done_++; continue; } /* skip the failing one */ \
            for (int m_ = 0; m_ < r_; m_++) {                                          \
                sent_all++;                                                            \
                if (sq_meas[q_ * SBATCH + done_ + (unsigned)m_]) sent_meas[d_]++;      \
            }                                                                          \
            done_ += (unsigned)r_;                                                     \
        }                                                                              \
        send_err += n_ - done_;                                                        \
        sq_n[q_] = 0;                                                                  \
    } while (0)
    struct sockaddr_storage rname[RBATCH];
    struct epoll_event *evs = calloc(MAXEV, sizeof *evs);
    if (!evs) die("calloc");
    char cbuf[1500];
    int more = 0;
    int64_t hard_end = t0 + (int64_t)((duration + drain + 30) * 1e9);

    for (;;) {
        if (g_stop) break;
        int64_t t = now_ns();
        if (t > hard_end) break;
        /* window boundaries */
        if (!in_window && k >= kwarm) {
            in_window = 1;
            snapshot(&sn0, relay_pid);
            tw0 = now_ns();
            snprintf(cbuf, sizeof cbuf, "%s-G0 G npkts_relayed", g_tag);
            if (g_nnodes == 1) ctl_send(cbuf, 0);
        }
        if (in_window && !window_done && k >= kmax) {
            window_done = 1;
            tw1 = now_ns();
            snapshot(&sn1, relay_pid);
            snprintf(cbuf, sizeof cbuf, "%s-G1 G npkts_relayed", g_tag);
            if (g_nnodes == 1) ctl_send(cbuf, 0);
            drain_end = tw1 + (int64_t)(drain * 1e9);
        }
        if (window_done && t >= drain_end) break;

        /* send everything due (bounded per iteration so receiving is not starved) */
        int64_t due = 0;
        for (uint64_t lim = 0; k < kmax && lim < 4096; lim++) {
            due = t0 + (int64_t)((k * (uint64_t)period) / S);
            if (due > t + tick_ns) {
                t = now_ns();
                if (due > t + tick_ns) break;
            }
            unsigned s_idx = (unsigned)(k % S);
            unsigned d = s_idx & 1u;
            sess_t *s = &ss[act[s_idx >> 1]];
            int64_t lag = t - due; /* negative when sent early within the tick */
            if (lag > max_lag) max_lag = lag;
            if (lag > 2000000) late_sends++;
            uint32_t meas = k >= kwarm ? 1u : 0u;
            pkt[0] = 0x80;
            pkt[1] = 0x00; /* PT 0 PCMU */
            uint16_t sq = htons(s->rtpseq[d]++);
            uint32_t tsn = htonl(s->rtpts[d]);
            s->rtpts[d] += ts_inc;
            uint32_t ssrc = htonl(s->ssrc[d]);
            memcpy(pkt + 2, &sq, 2);
            memcpy(pkt + 4, &tsn, 4);
            memcpy(pkt + 8, &ssrc, 4);
            uint32_t f[4] = {MAGIC, act[s_idx >> 1], d, meas};
            memcpy(pkt + RTP_HDR, f, sizeof f);
            int64_t ts = now_ns();
            int64_t rts = real_ns();
            memcpy(pkt + RTP_HDR + 16, &ts, 8);
            uint64_t nsq = s->nseq[d]++;
            memcpy(pkt + RTP_HDR + 24, &nsq, 8);
            memcpy(pkt + RTP_HDR + 32, &rts, 8);
            if (shared) {
                /* queue for sendmmsg on the shared socket, addressed per message */
                unsigned q = d * shared + act[s_idx >> 1] % shared;
                unsigned slot = sq_n[q]++;
                memcpy(sq_buf + ((size_t)q * SBATCH + slot) * plen, pkt, plen);
                sq_addr[q * SBATCH + slot].sin_port = htons(d == 0 ? s->port_b : s->port_a);
                sq_meas[q * SBATCH + slot] = (uint8_t)meas;
                if (sq_n[q] == SBATCH) flush_q(q);
            } else if (send(s->fd[d], pkt, plen, MSG_DONTWAIT) == (ssize_t)plen) {
                sent_all++;
                if (meas) sent_meas[d]++;
            } else {
                send_err++;
            }
            k++;
            t = ts;
        }
        for (unsigned q = 0; shared && q < 2 * shared; q++)
            if (sq_n[q]) flush_q(q);

        struct timespec to = {0, 0};
        if (tick_ns > 0) {
            /* Tick mode: sleep until the next batch of sends is due, then collect every
             * reply that arrived meanwhile without blocking. About 1/tick wake-ups per
             * second instead of one per received packet; latency is unaffected because
             * it is taken from kernel receive timestamps. */
            int64_t wake;
            if (k < kmax) wake = t0 + (int64_t)((k * (uint64_t)period) / S) - tick_ns;
            else wake = window_done ? drain_end : now_ns();
            int64_t cap = now_ns() + 50000000LL;
            if (wake > cap) wake = cap;
            if (!more && wake > now_ns()) {
                struct timespec ws = {wake / 1000000000LL, wake % 1000000000LL};
                clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ws, NULL);
            }
        } else if (k < kmax) {
            due = t0 + (int64_t)((k * (uint64_t)period) / S);
            int64_t w = due - now_ns();
            if (w < 0) w = 0;
            to.tv_sec = w / 1000000000LL;
            to.tv_nsec = w % 1000000000LL;
        } else {
            int64_t w = (window_done ? drain_end : t) - now_ns();
            if (w < 0) w = 0;
            if (w > 50000000) w = 50000000;
            to.tv_nsec = w;
        }
        int nev = epoll_pwait2(ep, evs, MAXEV, &to, NULL);
        if (nev < 0) {
            if (errno == EINTR) continue;
            die("epoll_pwait2");
        }
        more = nev == MAXEV; /* more sockets are ready: do not sleep before reading them */
        for (int e = 0; e < nev; e++) {
            uint32_t id = evs[e].data.u32;
            if (id == UINT32_MAX) {
                for (int guard = 0; guard < 64; guard++) {
                    ssize_t r = recv(g_ctl, cbuf, sizeof cbuf - 1, MSG_DONTWAIT);
                    if (r <= 0) break;
                    cbuf[r] = 0;
                    char rt;
                    unsigned idx;
                    char *body;
                    if (ctl_parse(cbuf, &rt, &idx, &body) == 0 && rt == 'G' && idx < 2 && isdigit((unsigned char)body[0]))
                        g_rel[idx] = strtoll(body, NULL, 10);
                }
                continue;
            }
            unsigned a, side, j = 0;
            int rfd, sh = (id & SHARED_ID) != 0;
            if (sh) {
                j = id & 0xffffu;
                side = j / shared;
                rfd = sfd[j];
                a = 0;
            } else {
                a = id >> 1;
                side = id & 1u;
                rfd = ss[act[a]].fd[side];
            }
            for (int m = 0; m < RBATCH; m++) {
                msgs[m].msg_hdr.msg_controllen = sizeof rctl[m];
                msgs[m].msg_hdr.msg_name = &rname[m];
                msgs[m].msg_hdr.msg_namelen = sizeof rname[m];
            }
            int n = recvmmsg(rfd, msgs, sh ? RBATCH : 8, MSG_DONTWAIT, NULL);
            if (n <= 0) {
                if (n < 0 && errno != EAGAIN) recv_err++;
                continue;
            }
            int64_t rx = now_ns();
            for (int m = 0; m < n; m++) {
                uint8_t *p = rbuf[m];
                if (msgs[m].msg_len < RTP_HDR + PL_MIN) { bad++; continue; }
                uint32_t f[4];
                int64_t ts;
                memcpy(f, p + RTP_HDR, sizeof f);
                memcpy(&ts, p + RTP_HDR + 16, 8);
                /* direction d arrives on the socket of the other party */
                if (f[0] != MAGIC || f[2] != (side ^ 1u)) { bad++; continue; }
                if (sh) {
                    /* right socket, and sent from the relay port of the opposite leg? */
                    if (f[1] >= nsess || !ss[f[1]].ok || f[1] % shared != j % shared ||
                        sa_port(&rname[m]) != (f[2] == 0 ? ss[f[1]].port_a : ss[f[1]].port_b)) {
                        bad++;
                        continue;
                    }
                } else if (f[1] != act[a]) {
                    bad++;
                    continue;
                }
                recv_all++;
                if (f[3]) {
                    recv_meas[f[2]]++;
                    hist_add(&happ[f[2]], rx - ts);
                    int64_t krx = -1, rts;
                    memcpy(&rts, p + RTP_HDR + 32, 8);
                    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[m].msg_hdr); c;
                         c = CMSG_NXTHDR(&msgs[m].msg_hdr, c)) {
                        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                            struct timespec kt;
                            memcpy(&kt, CMSG_DATA(c), sizeof kt);
                            krx = (int64_t)kt.tv_sec * 1000000000LL + kt.tv_nsec;
                        }
                    }
                    if (krx < 0) { no_kts++; krx = rts + (rx - ts); }
                    hist_add(&hist[f[2]], krx - rts);
                }
            }
        }
    }
    if (!window_done) {
        tw1 = now_ns();
        snapshot(&sn1, relay_pid);
    }
    int interrupted = g_stop ? 1 : 0;
    uint64_t drops_gen = 0, drops_relay = 0;
    {
        uint8_t *role = calloc(65536, 1);
        if (!role) die("calloc");
        for (unsigned i = 0; i < nsess; i++) {
            role[ss[i].lport[0]] = role[ss[i].lport[1]] = 1;
            if (ss[i].port_a) role[ss[i].port_a] = role[(ss[i].port_a + 1) & 0xffff] = 2;
            if (ss[i].port_b) role[ss[i].port_b] = role[(ss[i].port_b + 1) & 0xffff] = 2;
        }
        udp_drops(role, &drops_gen, &drops_relay);
        free(role);
    }

    /* ---- teardown ---- */
    int64_t t_td0 = now_ns();
    unsigned fail_d = ctl_phase('D', ss, nsess, window, now_ns() + (int64_t)(setup_to * 1e9));
    double teardown_s = (double)(now_ns() - t_td0) / 1e9;

    /* ---- report ---- */
    double win = tw1 > tw0 && tw0 ? (double)(tw1 - tw0) / 1e9 : 0;
    hist_t all, allapp;
    hist_init(&all);
    hist_init(&allapp);
    for (int d = 0; d < 2; d++) {
        for (uint32_t i = 0; i < NBUCKET; i++) all.b[i] += hist[d].b[i];
        all.n += hist[d].n;
        all.sum_us += hist[d].sum_us;
        if (hist[d].max_ns > all.max_ns) all.max_ns = hist[d].max_ns;
        for (uint32_t i = 0; i < NBUCKET; i++) allapp.b[i] += happ[d].b[i];
        allapp.n += happ[d].n;
        allapp.sum_us += happ[d].sum_us;
        if (happ[d].max_ns > allapp.max_ns) allapp.max_ns = happ[d].max_ns;
    }
    uint64_t sm = sent_meas[0] + sent_meas[1], rm = recv_meas[0] + recv_meas[1];
    double loss[2];
    for (int d = 0; d < 2; d++)
        loss[d] = sent_meas[d] ? 100.0 * ((double)sent_meas[d] - (double)recv_meas[d]) / (double)sent_meas[d] : 0;
    double loss_tot = sm ? 100.0 * ((double)sm - (double)rm) / (double)sm : 0;
    double rcpu = sn1.relay - sn0.relay, rsched = sn1.relay_sched - sn0.relay_sched;
    double gcpu = sn1.gen - sn0.gen;
    /* user time on the machine that was neither the relay's nor ours: other people's work */
    double foreign = (sn1.all_user - sn0.all_user) - (sn1.relay_user - sn0.relay_user) -
                     (sn1.gen_user - sn0.gen_user);

    FILE *out = stdout;
    fprintf(out, "{\"tool\": \"loadgen\", \"tag\": \"%s\", \"sessions\": %u, \"sessions_active\": %u, "
               "\"setup_failures\": %u, \"teardown_failures\": %u, \"setup_s\": %.3f, \"teardown_s\": %.3f, "
               "\"rate_pps\": %.1f, \"payload\": %u, \"duration_s\": %.2f, \"warmup_s\": %.2f, \"drain_s\": %.2f, "
               "\"window_s\": %.3f, \"interrupted\": %s, \"shared_sockets\": %u, ",
            g_tag, nsess, nact, fail_u + fail_l, fail_d, setup_s, teardown_s, rate, payload, duration,
            warmup, drain, win, interrupted ? "true" : "false", shared);
    fprintf(out, "\"sessions_per_node\": [");
    for (unsigned n = 0; n < g_nnodes; n++) fprintf(out, "%s%u", n ? ", " : "", per_node[n]);
    fprintf(out, "], ");
    fprintf(out, "\"target_pps\": %.0f, \"sent_pps\": %.0f, \"sent\": [%" PRIu64 ", %" PRIu64 "], "
               "\"recv\": [%" PRIu64 ", %" PRIu64 "], \"sent_all\": %" PRIu64 ", \"recv_all\": %" PRIu64 ", "
               "\"loss_pct\": [%.4f, %.4f], \"loss_pct_total\": %.4f, \"bad\": %" PRIu64 ", "
               "\"send_errors\": %" PRIu64 ", \"recv_errors\": %" PRIu64 ", \"late_sends\": %" PRIu64 ", "
               "\"max_send_lag_us\": %.0f, ",
            (double)S * rate, win > 0 ? (double)sm / win : 0, sent_meas[0], sent_meas[1], recv_meas[0],
            recv_meas[1], sent_all, recv_all, loss[0], loss[1], loss_tot, bad, send_err, recv_err, late_sends,
            (double)max_lag / 1000.0);
    fprintf(out, "\"lat_us\": ");
    hist_json(out, &all);
    fprintf(out, ", \"lat_us_dir\": [");
    hist_json(out, &hist[0]);
    fprintf(out, ", ");
    hist_json(out, &hist[1]);
    fprintf(out, "], \"lat_app_us\": ");
    hist_json(out, &allapp);
    fprintf(out, ", \"no_kernel_ts\": %" PRIu64 ", \"sock_drops_gen\": %" PRIu64
                ", \"sock_drops_relay\": %" PRIu64, no_kts, drops_gen, drops_relay);
    fprintf(out, ", \"foreign_user_s\": %.3f, \"cpu_busy_s\": [", foreign);
    for (int c = 0; c < sn1.ncpu; c++) fprintf(out, "%s%.3f", c ? ", " : "", sn1.busy[c] - sn0.busy[c]);
    fprintf(out, "], \"gen_cpu_s\": %.4f, \"gen_cpu_util\": %.4f, ", gcpu, win > 0 ? gcpu / win : 0);
    if (relay_pid > 0)
        fprintf(out, "\"relay_pids\": %d, \"relay_user_s\": %.4f, \"relay_cpu_s\": %.4f, \"relay_sched_cpu_s\": %.4f, "
                   "\"relay_cpu_util\": %.4f, \"relay_us_per_pkt\": %.3f, ",
                g_npids, sn1.relay_user - sn0.relay_user, rcpu, rsched, win > 0 ? rcpu / win : 0, rm ? rcpu * 1e6 / (double)rm : 0);
    else
        fprintf(out, "\"relay_cpu_s\": null, \"relay_us_per_pkt\": null, ");
    if (g_rel[0] >= 0 && g_rel[1] >= 0)
        fprintf(out, "\"g_npkts_relayed_delta\": %lld}\n", g_rel[1] - g_rel[0]);
    else
        fprintf(out, "\"g_npkts_relayed_delta\": null}\n");
    fflush(out);
    return interrupted ? 3 : 0;
}
