// Command testapp is the small service the demo and the tests run in
// containers. It serves HTTP on $PORT; its behaviour comes from env:
//
//	MESSAGE       text of GET / (default "hello from $SHOAL_SERVICE/$SHOAL_SLOT on $SHOAL_NODE")
//	EXIT_AFTER    exit after this duration (e.g. "2s"), with EXIT_CODE (default 1)
//	HEALTH        "fail" makes /healthz answer 500 from the start
//
// GET /healthz answers 200 while healthy; POST /fail and POST /recover flip
// it, so a test can make a running instance unhealthy. GET /lookup?host=NAME
// resolves NAME through the container's resolv.conf, one address a line.
// GET /dial?addr=HOST:PORT&send=TEXT connects from inside the container,
// sends TEXT (\r\n for line ends) and answers what came back within a
// second (until the answer holds &until=TEXT, if given): tests use it to
// reach other services, and to prove what a container cannot reach (502
// with the error).
//
// With no PORT (a cron job has no ports) it runs as a batch task: prints
// its message and arguments, sleeps SLEEP (e.g. "30s") when set, and exits
// with EXIT_CODE (default 0).
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "check" {
		// An exec health check: what `curl -f localhost:$PORT/healthz`
		// would be in a bigger image.
		resp, err := http.Get("http://127.0.0.1:" + os.Getenv("PORT") + "/healthz")
		if err != nil || resp.StatusCode != http.StatusOK {
			fmt.Fprintln(os.Stderr, "check failed:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	port := os.Getenv("PORT")
	msg := os.Getenv("MESSAGE")
	if msg == "" {
		msg = fmt.Sprintf("hello from %s/%s on %s", os.Getenv("SHOAL_SERVICE"), os.Getenv("SHOAL_SLOT"), os.Getenv("SHOAL_NODE"))
	}
	if port == "" {
		fmt.Println(msg, os.Args[1:])
		if d, err := time.ParseDuration(os.Getenv("SLEEP")); err == nil {
			time.Sleep(d) // a long batch run, for deadlines and restarts
		}
		code, _ := strconv.Atoi(os.Getenv("EXIT_CODE"))
		os.Exit(code)
	}
	var unhealthy atomic.Bool
	unhealthy.Store(os.Getenv("HEALTH") == "fail")
	if d, err := time.ParseDuration(os.Getenv("EXIT_AFTER")); err == nil {
		code, err := strconv.Atoi(os.Getenv("EXIT_CODE"))
		if err != nil {
			code = 1
		}
		time.AfterFunc(d, func() {
			fmt.Printf("exiting with code %d as told\n", code)
			os.Exit(code)
		})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, msg) })
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if unhealthy.Load() {
			http.Error(w, "unhealthy", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/lookup", func(w http.ResponseWriter, r *http.Request) {
		addrs, err := net.DefaultResolver.LookupHost(r.Context(), r.URL.Query().Get("host"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		sort.Strings(addrs)
		fmt.Fprintln(w, strings.Join(addrs, "\n"))
	})
	mux.HandleFunc("/dial", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		conn, err := net.DialTimeout("tcp", q.Get("addr"), 2*time.Second)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(time.Second))
		if send := strings.ReplaceAll(q.Get("send"), `\r\n`, "\r\n"); send != "" {
			if _, err := conn.Write([]byte(send)); err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
		}
		// Read until the answer holds `until`, or once without it.
		until := q.Get("until")
		var got []byte
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil || until == "" || strings.Contains(string(got), until) || len(got) > 1<<16 {
				break
			}
		}
		w.Write(got)
	})
	mux.HandleFunc("POST /log", func(w http.ResponseWriter, r *http.Request) {
		// Write about n bytes of output, for log rotation tests.
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		line := strings.Repeat("x", 99)
		for i := 0; i < n; i += 100 {
			fmt.Println(line)
		}
	})
	mux.HandleFunc("POST /fail", func(w http.ResponseWriter, r *http.Request) { unhealthy.Store(true) })
	mux.HandleFunc("POST /recover", func(w http.ResponseWriter, r *http.Request) { unhealthy.Store(false) })
	fmt.Printf("testapp listening on :%s\n", port)
	if err := http.ListenAndServe(":"+port, mux); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}
