// Package agentproto is the wire protocol between the host and the guest
// agent (cmd/firesandbox-agent), and the host-side client for it.
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
// Control messages carry JSON payloads. Output chunks carry a 4-byte exec id,
// a 1-byte stream number and raw bytes, so program output is never re-encoded.
//
// A session looks like this:
//
//	host                          guest agent
//	                       <----  Hello (sent when the channel opens)
//	Ping                   ---->
//	                       <----  Hello (answer to every Ping)
//	Exec{ID: 1, Argv...}   ---->
//	                       <----  Output{1, stdout, "4"}
//	                       <----  Output{1, stdout, "2\n"}
//	                       <----  Exit{ID: 1, Code: 0}
//
// The host pings after connecting because the guest's first Hello may have
// been written before anyone was listening (or, after a snapshot restore,
// long ago). Exec ids are chosen by the host and let several execs share one
// channel.
package agentproto
