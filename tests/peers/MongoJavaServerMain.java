// mongo-java-server (de.bwaldvogel:mongo-java-server, in-memory backend) as a stand-alone test peer.
// Usage: java -cp classes:lib/* MongoJavaServerMain PORT
// Binds 127.0.0.1:PORT only, prints one ready line, runs until killed (SIGTERM shuts it down).
// Built by scripts/install-mongo-peers.sh into the cache outside the clone.

import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;

public final class MongoJavaServerMain {
    private MongoJavaServerMain() {
    }

    public static void main(String[] args) throws InterruptedException {
        if (args.length != 1) {
            System.err.println("usage: MongoJavaServerMain PORT");
            System.exit(2);
        }
        int port = Integer.parseInt(args[0]);
        MongoServer server = new MongoServer(new MemoryBackend());
        server.bind("127.0.0.1", port);
        Runtime.getRuntime().addShutdownHook(new Thread(server::shutdownNow, "mongo-java-server-shutdown"));
        System.out.println("mongo-java-server ready on 127.0.0.1:" + port);
        System.out.flush();
        Thread.currentThread().join();
    }
}
