// Package cache is a content-addressed cache of results: a result is
// stored under a digest of the request that produced it ([NewKey]: the
// workload's name, its canonical params, its input), so any request with
// the same digest may be answered with it.
//
// It is a mechanism and knows nothing of HTTP or of the workloads: the
// caller decides what is cacheable, computes the key, and treats every
// error from a store as a miss. [Key.ETag] and [MatchETag] turn a key into
// an entity tag and compare one with an If-None-Match field, on strings
// and bytes; the caller writes the headers.
//
// # The stores
//
//   - [Memory]: a bounded LRU with a TTL. The primary holds the box's one
//     Memory and serves it to the workers ([Listen], [Memory.Serve]).
//   - [Client]: a worker's [Store] backed by the primary's Memory, over a
//     unix stream socket.
//   - [Redis]: a Store in Redis, shared across hosts.
//   - [Tiered]: the box's store first, then Redis; a Redis hit is put into
//     the box's store; Put writes both.
//
// # Why the primary holds the box's cache
//
// One copy per box: N workers with caches of their own would hold up to N
// copies of a popular result, in N times the memory, and each would see
// only the results its own requests made, so the hit rate would fall as
// the box's workers grow. With the primary holding it, every worker sees
// every result the box computed, and the bound is the box's.
//
// No state shared between processes: a cache in shared memory would need
// locks or half-written structures in that memory, and the supervisor and
// the kernel kill workers with SIGKILL (timeouts, the OOM killer,
// recycling) at any instruction, leaving a lock held or an entry torn for
// every other worker. Here a worker holds nothing but its end of a socket:
// a worker killed mid-frame is a connection that ended, whose half-received
// value is dropped and whose reservation is given back
// (TestServeKilledWorker). The primary runs no workload code, so the cache
// lives as long as the primary; a new primary starts with an empty one.
//
// The cost is a unix-socket round trip per lookup. Measured with the
// server in a process of its own (BenchmarkClientGetProcess, a 2-vCPU VM
// shared with other work, so an upper figure): 19–38 µs for a miss and
// 31–55 µs for a hit of 20 KB; in one process (BenchmarkClientGet) 11 µs
// and 20 µs; a hit in a Memory in the same process (BenchmarkMemoryGet)
// costs 55 ns. A result worth caching costs milliseconds to compute; a
// workload cheaper than the round trip is not worth caching.
//
// # What is cached, and what never is
//
// Results only, never inputs: a request's input is hashed into its key and
// dropped. The caller decides which workloads are cacheable, and only a
// deterministic workload is, whose result depends on its name, params and
// input and nothing else (no clock, no randomness, no secret of the
// server's, no per-client state). Password hashing never is: its salt is
// random, and caching it would hand one salt to every user of a password.
// A password verify must never be cached: its key would be a fast digest
// of the password, so the cache would hold an index from BLAKE3(password)
// to "valid", which anyone who can read the primary's memory or the Redis
// keys can test guesses against at BLAKE3's speed instead of the
// password hash's deliberately slow one, and a hit would answer a verify
// without paying the cost that rate-limits guessing. In general: a
// workload whose input is a secret must not be cached, because a hit's
// latency also tells a client that someone sent the same input before.
//
// # Bounds
//
// A [Memory] holds at most MaxBytes, counted as each value's allocation
// (its length rounded up as the Go allocator rounds it, read from the
// allocator at start) plus [EntryOverhead] (256 bytes: the entry and its
// slot in the index, measured at 195–217) per entry, plus the values
// being received on the socket, which are charged from the moment their
// length is read; the least recently used entries are evicted to make
// room. No value over MaxEntry is kept, and none over MaxEntry is read off
// the socket: a put's 4-byte length is checked before anything of its size
// is allocated. An entry older than the TTL is a miss and is freed (by the
// Get that finds it, or up to 16 at a time by each Put, oldest first).
//
// The primary's memory for the cache therefore grows to at most:
//
//	MaxBytes                        (256 MiB by default)
//	+ MaxConns × ~16 KiB            (a connection's 4 KiB read buffer, its
//	                                 goroutine's stack; 16 MiB at the default 1024)
//	+ values evicted while a reply still writes them (one per connection,
//	  for at most the 5 s a frame may take)
//
// of live heap. The Go runtime lets the heap grow past live data by GOGC
// before it collects, so the primary's GOMEMLIMIT, if set, should leave
// room for MaxBytes twice over. Each Client keeps at most Conns idle
// connections; a Redis store's client at most its PoolSize.
//
// # Versions
//
// NewKey's encoding begins with a version string, so a change of encoding
// never reads results stored under the old one. When a workload's output
// changes for the same input (a fix, a new encoder), the caller changes the
// workload's name or adds a param ("thumbnail@2"), or waits for the TTLs:
// results are addressed by what was asked, not by the code that answered.
//
// # Wire protocol
//
// Between a Client and Memory.Serve, on a unix stream socket; each request
// is answered by one reply, in order. Integers are big-endian.
//
//	request:
//	  'G' key[32]                       get
//	  'P' key[32] len[4] value[len]     put (len ≤ the server's MaxEntry)
//	reply:
//	  'H' len[4] value[len]             hit
//	  'M'                               miss
//	  'O'                               stored
//	  'E' reason[1]                     refused:
//	        'B' unknown op              then the server closes the connection
//	        'L' len over MaxEntry       then the server closes the connection
//	        'F' no room (values in flight hold MaxBytes); the value was read
//	            and dropped, and the connection stays usable
//
// The server closes a connection on a malformed frame, on a frame not done
// within 5 s, and unread when the peer's uid (SO_PEERCRED) is not its own
// or MaxConns are open already; it goes on serving the others. A Client
// drops a connection on any error and on a reply over its own MaxEntry,
// before reading it.
//
// # Lifetimes and threading
//
// Every store is safe for concurrent use. [Memory.Get] returns the stored
// bytes, which are never written again and must not be modified; a
// Client's and a Redis store's Get return bytes of their own. Put never
// keeps the caller's slice. Serve's connection goroutines have all ended
// when it returns. A Redis call ends by its Timeout, its connection's
// deadline, and leaves nothing running behind it (see [Redis]).
//
// # Measured
//
// On the build box (AMD EPYC, 2 vCPUs, shared; go test -bench):
//
//	NewKey, 3.6 MB input:  BLAKE3 0.6–0.9 ms at GOMAXPROCS=1 (4–5.6 GB/s),
//	                       0.5–0.65 ms at 2; SHA-256 1.75 ms (2.05 GB/s, on
//	                       the CPU's SHA extensions)
//	Client Get, 20 KB hit: 31–55 µs across processes, 20 µs in one
//	Client Get, miss:      19–38 µs across processes, 11 µs in one
//	Memory Get, hit:       55 ns, no allocation
//	MatchETag, 3 tags:     22 ns, no allocation
package cache
