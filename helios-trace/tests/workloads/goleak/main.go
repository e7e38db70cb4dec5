// goleak: the classic Go descriptor leaks, for helios-trace's kernel tests (tests/integration/runtimes.rs).
//
//	goleak serve [SOCKET]   a loopback HTTP server (and on the Unix socket SOCKET, if given);
//	                        prints "port N", serves until stdin closes
//	goleak client PORT DIR  prints "ready", then one command a line, answering "ok ...";
//	                        PORT "self": to a server of its own, in this process (a pod
//	                        has only its own loopback)
//	  http N   N GET requests whose response bodies are never closed: each keeps its connection
//	           (net/http cannot reuse a connection whose body was not read to the end and closed),
//	           dialled by the Transport in a goroutine of its own
//	  dial N   N TCP connections dialled by leakDial itself and kept
//	  spawn N  a goroutine created by spawnLeaker opens this program's file N times and keeps
//	           it; answers
//	           "ok FUNCTION FILE:LINE", what Go's own traceback says created it
//	  exit
package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
)

var kept []any

func handler(w http.ResponseWriter, r *http.Request) {
	w.Write([]byte("hello\n"))
}

// serveSelf serves HTTP in this process; its port.
func serveSelf() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go http.Serve(ln, http.HandlerFunc(handler))
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

func serve() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("hello\n"))
	})
	if len(os.Args) > 2 {
		unix, err := net.Listen("unix", os.Args[2])
		if err != nil {
			panic(err)
		}
		go http.Serve(unix, handler)
	}
	fmt.Printf("port %d\n", ln.Addr().(*net.TCPAddr).Port)
	go http.Serve(ln, handler)
	bufio.NewReader(os.Stdin).ReadString('\n')
}

//go:noinline
func leakBodies(port string, n int) {
	for i := 0; i < n; i++ {
		resp, err := http.Get("http://127.0.0.1:" + port + "/")
		if err != nil {
			panic(err)
		}
		kept = append(kept, resp) // resp.Body is never closed
	}
}

//go:noinline
func leakDial(port string, n int) {
	for i := 0; i < n; i++ {
		conn, err := net.Dial("tcp", "127.0.0.1:"+port) // LEAK_DIAL
		if err != nil {
			panic(err)
		}
		kept = append(kept, conn)
	}
}

//go:noinline
func spawnLeaker(n int) string {
	done := make(chan string)
	go leakFiles(n, done) // SPAWN
	return <-done
}

// leakFiles keeps n descriptors of the program's own file, then sends what Go's own traceback says created this
// goroutine: "FUNCTION FILE:LINE" ("created by F" or, since Go 1.21, "created by F in
// goroutine N", then "\tFILE:LINE +0xOFF").
//
//go:noinline
func leakFiles(n int, done chan string) {
	for i := 0; i < n; i++ {
		f, err := os.Open(os.Args[0])
		if err != nil {
			panic(err)
		}
		kept = append(kept, f)
	}
	buf := make([]byte, 1<<16)
	lines := strings.Split(string(buf[:runtime.Stack(buf, false)]), "\n")
	for i, line := range lines {
		if strings.HasPrefix(line, "created by ") && i+1 < len(lines) {
			function := strings.Fields(strings.TrimPrefix(line, "created by "))[0]
			place := strings.Fields(strings.TrimSpace(lines[i+1]))[0]
			done <- function + " " + place
			return
		}
	}
	done <- "none none"
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		serve()
		return
	}
	port := os.Args[2]
	if port == "self" {
		port = serveSelf()
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fields := strings.Fields(in.Text())
		if len(fields) == 0 {
			continue
		}
		n := 0
		if len(fields) > 1 {
			n, _ = strconv.Atoi(fields[1])
		}
		switch fields[0] {
		case "http":
			leakBodies(port, n)
		case "dial":
			leakDial(port, n)
		case "spawn":
			fmt.Println("ok", spawnLeaker(n))
			continue
		case "exit":
			return
		}
		fmt.Println("ok")
	}
}
