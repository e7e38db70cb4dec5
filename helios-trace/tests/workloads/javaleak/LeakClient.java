// javaleak: a Java client that keeps the connections and files it opens, for helios-trace's
// kernel tests (tests/integration/runtimes.rs). Run as the tests run it:
//
//   java -XX:+PreserveFramePointer -Xcomp -XX:TieredStopAtLevel=1
//        -XX:CompileCommand=compileonly,LeakClient::* -XX:CompileCommand=dontinline,LeakClient::*
//        -cp CLASSES LeakClient PORT FILE
//
// -XX:+PreserveFramePointer keeps rbp a frame pointer in compiled code (HotSpot's own
// interpreter frames always have one), so a stack walks through Java frames without CFI.
// -Xcomp compiles this class's methods at their first call (compileonly: the JDK's stay
// interpreted and start-up stays quick), so its frames are JIT code the perf map names; the
// interpreter is one blob there, and a perf map cannot tell interpreted methods apart. C1
// alone (TieredStopAtLevel=1): C2 code compiled without a profile is thrown away at its first
// uncommon trap, and the method runs interpreted until compiled again, after the map was
// written. dontinline: each method a frame of its own. The map is written by HotSpot's
// diagnostic command `jcmd PID Compiler.perfmap` (JDK 17+), which the test runs after one
// command of each kind.
//
// It prints "ready", then reads one command a line, answering "ok":
//     (PORT "self": a server of its own on a loopback port, in this process)
//     connect N   N TCP connections to 127.0.0.1:PORT opened by connectAndKeep, kept open
//     file N      N reads of FILE opened by openAndKeep, kept open
//     exit
import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

public class LeakClient {
    // The main thread and the acceptor add to it at once.
    static final List<Object> kept = Collections.synchronizedList(new ArrayList<>());

    static void connectAndKeep(int port, int n) throws IOException {
        for (int i = 0; i < n; i++) {
            kept.add(new Socket(InetAddress.getLoopbackAddress(), port)); // LEAK_CONNECT
        }
    }

    static void openAndKeep(String path, int n) throws IOException {
        for (int i = 0; i < n; i++) {
            kept.add(new FileInputStream(path)); // LEAK_FILE
        }
    }

    public static void main(String[] args) throws Exception {
        int port;
        if (args[0].equals("self")) {
            ServerSocket server = new ServerSocket(0, 128, InetAddress.getLoopbackAddress());
            port = server.getLocalPort();
            Thread acceptor = new Thread(() -> {
                try {
                    while (true) {
                        kept.add(server.accept());
                    }
                } catch (IOException e) {
                    // the server is closed at exit
                }
            });
            acceptor.setDaemon(true);
            acceptor.start();
        } else {
            port = Integer.parseInt(args[0]);
        }
        String file = args[1];
        BufferedReader lines = new BufferedReader(new InputStreamReader(System.in));
        System.out.println("ready");
        System.out.flush();
        String line;
        while ((line = lines.readLine()) != null) {
            String[] words = line.trim().split("\\s+");
            int count = words.length > 1 ? Integer.parseInt(words[1]) : 0;
            switch (words[0]) {
                case "connect" -> connectAndKeep(port, count);
                case "file" -> openAndKeep(file, count);
                case "exit" -> System.exit(0);
                default -> { }
            }
            System.out.println("ok");
            System.out.flush();
        }
    }
}
