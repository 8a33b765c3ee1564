// Package adversarial is firesandbox's security suite: each test performs
// an attack on a real `firesandbox serve` (the built binary, as a separate
// process, with real VMs) and asserts the safe outcome. It holds no code
// but its tests; `make test-adversarial` runs it, and `make test` too.
//
// The attacks, by the security issue's items:
//
//   - host resources: a slow reader holds no VM past its program's end;
//     output past the cap costs the host nothing; a 3.5 MiB program is
//     refused before a VM; 500 connections that announce a body and send
//     none are all closed within a minute while /healthz answers;
//   - late output: deleting a sandbox while `yes` streams from it;
//   - tenants: another tenant's key gets 404 everywhere; quotas answer 429;
//   - shapes: one not offered is refused before a VM;
//   - browsers: DNS rebinding, cross-origin pages, text/plain CSRF;
//   - mounts: a guest path with "\r" cannot add kernel arguments, a host
//     directory named like an option is packed as a directory, and a file
//     only its owner could read stays unreadable to the guest's user;
//   - crashes: serve killed with SIGKILL at points of a hibernation and a
//     resume leaves the sandbox resumable, or lost with its disk kept.
//
// It needs FIRESANDBOX_VM_TESTS=1 and the shared fixtures (`make kernel
// image`); FIRESANDBOX_BIN names the binary (else the test builds one).
package adversarial
