package e2b

import (
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/firesandbox/firesandbox/internal/api/e2b/envdpb/filesystem/filesystemconnect"
	"github.com/firesandbox/firesandbox/internal/api/e2b/envdpb/process/processconnect"
)

// EnvdVersion is the envd version the adapter reports. The SDKs turn
// features on by it, so it is the highest version whose features are all
// really here:
//
//	0.1.0  below it the SDK kills the sandbox it created
//	0.1.4  recursive watchDir
//	0.3.0  commands without stdin unless asked (stdin: true opens it)
//	0.4.0  the server picks the default user when the SDK names none
//	0.5.2  closeStdin
//	0.5.7  octet-stream (and gzip) uploads
//
// and not 0.6.2 (file metadata in extended attributes: X-Metadata-*
// headers and EntryInfo.metadata), nor what comes after it (0.6.3: the
// entry in watch events; 0.6.4: watches on network mounts).
const EnvdVersion = "0.5.7"

// envdServices serves process.Process and filesystem.Filesystem over
// Connect: the JSON codec the SDKs use (and binary protobuf), unary and
// server streams, over HTTP/1.1 and h2c. The Connect-Timeout-Ms deadline
// is applied by connect to each call's context.
func (h *Handler) envdServices() http.Handler {
	mux := http.NewServeMux()
	opts := []connect.HandlerOption{connect.WithReadMaxBytes(maxJSON), connect.WithCompressMinBytes(1 << 10)}
	mux.Handle(processconnect.NewProcessHandler(&processService{h: h}, opts...))
	mux.Handle(filesystemconnect.NewFilesystemHandler(&filesystemService{h: h}, opts...))
	return mux
}

// keepaliveInterval is how often a silent stream sends a keepalive
// event: the SDK's Keepalive-Ping-Interval header (seconds), else 30 s,
// kept between 1 s and 5 min.
func keepaliveInterval(hdr http.Header) time.Duration {
	d := 30 * time.Second
	if v := hdr.Get("Keepalive-Ping-Interval"); v != "" {
		var n int
		for _, c := range v {
			if c < '0' || c > '9' || n > 1e6 {
				return d
			}
			n = n*10 + int(c-'0')
		}
		d = time.Duration(n) * time.Second
	}
	return min(max(d, time.Second), 5*time.Minute)
}
