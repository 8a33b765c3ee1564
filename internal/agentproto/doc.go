// Package agentproto is the contract between the host and the guest agent
// (cmd/firesandbox-agent): the boot arguments the agent reads from the
// kernel command line (Boot), the limits it applies (DefaultLimits,
// MaxLimits), the wire protocol, and the host-side client.
//
// The protocol is a stream of frames over any reliable byte stream: a
// virtio-serial port (QEMU), a vsock connection (Firecracker) or a plain
// socket pair (the agent run as a host process in tests). Every frame starts
// with an 8-byte header:
//
//	magic   [2]byte  0xF5 0x5B
//	version uint8    ProtocolVersion; a peer rejects frames of another version
//	type    uint8    MsgHello, MsgExec, ...
//	length  uint32   big-endian payload length, at most MaxPayload
//
// Control messages carry JSON payloads. Output and transfer chunks carry a
// 4-byte request id, a 1-byte stream number (or flags) and raw bytes, so
// program output and file contents are never re-encoded.
//
// A session looks like this:
//
//	host                          guest agent
//	                       <----  Hello (sent when the channel opens)
//	Ping                   ---->
//	                       <----  Hello (answer to every Ping)
//	Exec{ID: 1, Argv...}   ---->
//	                       <----  Started{1, PID: 212}
//	                       <----  Output{1, stdout, "4"}
//	Stdin{ID: 2, PID: 212} ---->                       (if the exec kept stdin open)
//	                       <----  Ack{2}
//	                       <----  Output{1, stdout, "2\n"}
//	                       <----  Exit{ID: 1, Code: 0}
//	Upload{ID: 3, Path}    ---->
//	                       <----  Ack{3}                (the file is open)
//	Chunk{3, data}         ---->  (at most Window unacknowledged)
//	                       <----  Ack{3, Bytes}
//	Chunk{3, EOF}          ---->
//	                       <----  Entries{3, [the file]}
//
// The host pings after connecting because the guest's first Hello may have
// been written before anyone was listening (or, after a snapshot restore,
// long ago). Request ids are chosen by the host and let any number of calls
// share one channel; Cancel{ID} ends any of them.
//
// Processes are named by their guest pid (Started says it). A process
// started with Background outlives its request and the channel: a later
// channel lists it (ListProcs), streams its output again (Connect), writes
// to its stdin, resizes its terminal and signals it. Only processes the
// agent started can be named.
//
// File calls name absolute guest paths, resolved inside the guest root; a
// call with Within is confined to that directory, symlinks included. They
// run with the permissions of the call's user (the sandbox user unless
// AsUser says otherwise), and what they create belongs to that user.
//
// The guest is not trusted. The Client checks every answer against its
// request (type, pid, declared sizes, the transfer window), caps output
// per stream on the host whatever the guest sends, bounds every call in
// time (DefaultCallTimeout, DefaultWriteTimeout, ExecGrace) and closes the
// channel on any protocol violation. Text from the guest that reaches a
// terminal goes through TerminalSafe or a TerminalWriter.
package agentproto
