/* sinkclock: an SMTP responder that notes when each message arrives, for benchmarks/e2e.py.
 *
 *     sinkclock PORT DELAY_US OUT
 *
 * Listens on 127.0.0.1:PORT and answers EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP and QUIT with
 * success; it checks no address and keeps no message. When a message's final "." arrives,
 * it appends "<message-id> <unix time>" to OUT (CLOCK_REALTIME, ns; "-" when the message has
 * no Message-ID header), so a benchmark can time each email at the receiving end.
 * DELAY_US > 0 holds every reply (the greeting included) that long, as a relay in the same
 * region would: one command is answered at a time per connection (no PIPELINING offered).
 * OUT is flushed after each round of events and on SIGTERM/SIGINT.
 *
 * Why C and not Python: on a 2-core box the sink must cost next to nothing, like Postfix's
 * smtp-sink it replaces (which cannot report arrivals); one epoll loop, one process.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

enum { CMD, DATA };

struct conn {
    int fd, state, closed;
    char *in;                /* bytes read and not yet handled */
    size_t len, cap, scanned; /* scanned: how far DATA was searched for the end */
    const char *reply;        /* held reply (DELAY_US > 0), NULL when none */
    int quit_after;           /* close once the held reply is written */
    uint64_t due;             /* when the held reply goes out (CLOCK_MONOTONIC, ns) */
    struct conn *next;        /* in the held-replies queue: due times only grow */
};

static const char GREETING[] = "220 sinkclock ESMTP\r\n";
static const char EHLO[] = "250-sinkclock\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n";
static const char OK[] = "250 OK\r\n";
static const char GO[] = "354 End data with <CR><LF>.<CR><LF>\r\n";
static const char BYE[] = "221 Bye\r\n";
static const char NOPE[] = "502 Command not implemented\r\n";

static uint64_t delay_ns;
static int epfd, timerfd;
static FILE *out;
static int dirty;
static volatile sig_atomic_t stopping;
static struct conn *held_head, *held_tail;

static uint64_t mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void on_signal(int sig) { (void)sig; stopping = 1; }

static void drop(struct conn *c) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->closed = 1;
    if (!c->reply) { /* not in the held queue: nothing else points at it */
        free(c->in);
        free(c);
    }
}

/* Replies are a few dozen bytes into an empty socket buffer: a short write means the client
 * stopped reading, and it is dropped rather than buffered. */
static void send_now(struct conn *c, const char *reply) {
    size_t n = strlen(reply);
    if (write(c->fd, reply, n) != (ssize_t)n) c->closed = -1;
}

static void arm_timer(void) {
    struct itimerspec when = {0};
    if (held_head) {
        when.it_value.tv_sec = (time_t)(held_head->due / 1000000000u);
        when.it_value.tv_nsec = (long)(held_head->due % 1000000000u);
    }
    timerfd_settime(timerfd, TFD_TIMER_ABSTIME, &when, NULL);
}

static void reply(struct conn *c, const char *text, int quit) {
    if (!delay_ns) {
        send_now(c, text);
        if (quit) c->closed = -1;
        return;
    }
    c->reply = text;
    c->quit_after = quit;
    c->due = mono_ns() + delay_ns;
    c->next = NULL;
    if (held_tail) held_tail->next = c; else held_head = c;
    held_tail = c;
    if (held_head == c) arm_timer();
}

static void record(const char *msg, size_t len) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    const char *end = memmem(msg, len, "\r\n\r\n", 4);
    size_t header = end ? (size_t)(end - msg) + 2 : len;
    for (size_t at = 0; at < header;) { /* each header line */
        const char *eol = memmem(msg + at, header - at, "\r\n", 2);
        size_t line = eol ? (size_t)(eol - (msg + at)) : header - at;
        if (line > 11 && strncasecmp(msg + at, "Message-ID:", 11) == 0) {
            const char *v = msg + at + 11, *stop = msg + at + line;
            while (v < stop && (*v == ' ' || *v == '\t')) v++;
            fprintf(out, "%.*s %lld.%09ld\n", (int)(stop - v), v, (long long)t.tv_sec, t.tv_nsec);
            dirty = 1;
            return;
        }
        at += line + 2;
    }
    fprintf(out, "- %lld.%09ld\n", (long long)t.tv_sec, t.tv_nsec);
    dirty = 1;
}

static void consume(struct conn *c, size_t n) {
    memmove(c->in, c->in + n, c->len - n);
    c->len -= n;
    c->scanned = 0;
}

/* Handle what is buffered, one reply at a time while a reply is held. */
static void handle(struct conn *c) {
    while (!c->closed && !c->reply) {
        if (c->state == DATA) {
            size_t from = c->scanned > 3 ? c->scanned - 3 : 0;
            if (c->len >= 3 && memcmp(c->in, ".\r\n", 3) == 0) { /* an empty message */
                record("", 0);
                consume(c, 3);
            } else {
                char *end = c->len >= from + 5 ? memmem(c->in + from, c->len - from, "\r\n.\r\n", 5) : NULL;
                if (!end) { c->scanned = c->len; return; }
                size_t msg = (size_t)(end - c->in) + 2;
                record(c->in, msg);
                consume(c, msg + 3);
            }
            c->state = CMD;
            reply(c, OK, 0);
            continue;
        }
        char *eol = memmem(c->in, c->len, "\r\n", 2);
        if (!eol) return;
        char verb[5] = {0};
        memcpy(verb, c->in, c->len < 4 ? c->len : 4);
        consume(c, (size_t)(eol - c->in) + 2);
        if (!strcasecmp(verb, "EHLO")) reply(c, EHLO, 0);
        else if (!strcasecmp(verb, "HELO")) reply(c, "250 sinkclock\r\n", 0);
        else if (!strcasecmp(verb, "MAIL") || !strcasecmp(verb, "RCPT") ||
                 !strcasecmp(verb, "RSET") || !strcasecmp(verb, "NOOP")) reply(c, OK, 0);
        else if (!strcasecmp(verb, "DATA")) { c->state = DATA; reply(c, GO, 0); }
        else if (!strcasecmp(verb, "QUIT")) reply(c, BYE, 1);
        else reply(c, NOPE, 0);
    }
}

static void readable(struct conn *c) {
    for (;;) {
        if (c->cap - c->len < 65536) {
            c->cap = c->cap * 2 + 65536;
            c->in = realloc(c->in, c->cap);
            if (!c->in) { perror("realloc"); exit(1); }
        }
        ssize_t n = read(c->fd, c->in + c->len, c->cap - c->len);
        if (n > 0) { c->len += (size_t)n; continue; }
        if (n < 0 && errno == EAGAIN) break;
        c->closed = -1; /* EOF or error */
        break;
    }
    if (c->closed == 0) handle(c);
    if (c->closed < 0) { c->closed = 0; drop(c); }
}

static void release_due(void) {
    uint64_t expirations, now = mono_ns();
    if (read(timerfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN) perror("timerfd");
    while (held_head && held_head->due <= now) {
        struct conn *c = held_head;
        held_head = c->next;
        if (!held_head) held_tail = NULL;
        const char *text = c->reply;
        c->reply = NULL;
        if (c->closed) { free(c->in); free(c); continue; } /* dropped while its reply was held */
        send_now(c, text);
        if (c->quit_after) c->closed = -1;
        if (!c->closed) handle(c);
        if (c->closed < 0) { c->closed = 0; drop(c); }
    }
    arm_timer();
}

static void accept_all(int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) { perror("calloc"); exit(1); }
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
        reply(c, GREETING, 0);
        if (c->closed < 0) { c->closed = 0; drop(c); }
    }
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: sinkclock PORT DELAY_US OUT\n"); return 2; }
    delay_ns = strtoull(argv[2], NULL, 10) * 1000u;
    out = fopen(argv[3], "w");
    if (!out) { perror(argv[3]); return 1; }
    setvbuf(out, NULL, _IOFBF, 1 << 20);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction stop = {.sa_handler = on_signal};
    sigaction(SIGTERM, &stop, NULL);
    sigaction(SIGINT, &stop, NULL);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) || listen(lfd, 1024)) {
        perror("bind/listen");
        return 1;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &lfd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    ev.data.ptr = &timerfd;
    epoll_ctl(epfd, EPOLL_CTL_ADD, timerfd, &ev);

    struct epoll_event events[256];
    while (!stopping) {
        int n = epoll_wait(epfd, events, 256, 200);
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == &lfd) accept_all(lfd);
            else if (events[i].data.ptr == &timerfd) release_due();
            else readable(events[i].data.ptr);
        }
        if (dirty) { fflush(out); dirty = 0; }
    }
    fclose(out);
    return 0;
}
