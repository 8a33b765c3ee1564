// Package judge0 serves Judge0 CE's API (version 1.13.1) on firesandbox,
// so that clients written for Judge0 keep working when pointed at
// `firesandbox serve`: the same paths, parameters, field names and types,
// null where Judge0 sends null, its status ids 1-14, its language ids, and
// its error bodies and codes (422 with {"field": ["message"]} for
// validation, 400 {"error": ...} for refusals, 503 "queue is full").
//
// # Lifecycle
//
// A submission is validated, stored in the state database as In Queue
// (1), and answered with its token. Workers take the oldest queued one
// (Processing, 2), each holding a slot of the server's VM gate, run it in
// a fresh VM through the Runner, and store its result; a callback_url
// then gets a PUT. What a stopped server was running is queued again
// when the next one starts, so no submission is lost or stuck.
//
//	store, _ := state.OpenSubmissions(db)
//	h, _ := judge0.New(judge0.Config{}, judge0.Deps{
//		Runner: mgr, Catalog: mgr.Catalog(), Store: store, Gate: limiter,
//		Authenticate: tenants.FromJudge0Headers, // X-Auth-Token, X-Auth-User
//		CallbackAllowed: policy.AllowsHost,
//	})
//	defer h.Close(ctx)
//	mux.Handle("/judge0/", http.StripPrefix("/judge0", h))
//
// # Limits
//
// Judge0's limits map onto the agent's (agentproto.Limits) as follows.
//
//   - wall_time_limit (s): the run's wall-clock limit, enforced; past it
//     the program is killed: Time Limit Exceeded.
//   - cpu_time_limit (s): checked after the run against the CPU time the
//     agent measured (cgroup): above it is Time Limit Exceeded. The
//     program is not killed at it, only at the wall-clock limit, so
//     cpu_extra_time is accepted and has no further effect. 0 means none.
//   - memory_limit (KB): the cgroup memory limit of the process tree,
//     enforced. Left out, it is Judge0's default or the language's own
//     need, whichever is larger (a JVM needs more than 125 MB).
//   - max_processes_and_or_threads: the cgroup's task limit, enforced;
//     left out, as for memory.
//   - max_file_size (KB): the cap on each of stdout and stderr, enforced;
//     past it the program is killed and the status is Runtime Error
//     (SIGXFSZ), as isolate reports a program whose output file grew past
//     its size limit. Files the program writes itself are bounded by the
//     VM's memory (they live in its tmpfs), not by this.
//   - stack_limit (KB), enable_per_process_and_thread_time_limit and
//     enable_per_process_and_thread_memory_limit: accepted, validated and
//     reported, not enforced separately; the cgroup limits above bound
//     the whole process tree, and the VM bounds everything.
//   - number_of_runs: the program runs that many times, each in a fresh
//     VM, stopping at the first that is not Accepted; time and memory are
//     averaged, as in Judge0.
//   - Compilation runs under the language's own limits (Judge0 uses its
//     maxima there).
//
// Options: redirect_stderr_to_stdout sends the program's stderr into
// stdout; command_line_arguments and compiler_options are split into
// words as Judge0's bash script would, after removing the characters
// Judge0 removes ($&;<>|`), and compiler options go right after the
// compiler's name. enable_network is refused unless Deps.Network allows
// it for the tenant. additional_files is a zip unpacked beside the
// program (never replacing it, as `unzip -n`); language 89 (Multi-file
// program) takes every file from it and runs its `compile` (or
// compile.sh) and `run` (or run.sh) scripts with bash, in the image of
// the installed language most of its files are written in.
//
// # Deliberate differences
//
//   - Text sent with base64_encoded=true must be base64 (line breaks and
//     missing padding are fine); Ruby's decoder turns anything else into
//     garbage silently, this answers 422 "is not valid base64".
//   - Deletion is on unless Config.DisableDelete (Judge0: off by default),
//     because here every submission belongs to a tenant, and another
//     tenant's token is 404 everywhere.
//   - callback_url must name a host the server's policy allows (422
//     otherwise); redirects are not followed.
//   - Each Judge0 id of a language runs the one version the catalog has;
//     /languages names that version. Languages Judge0 CE lacks have ids
//     from 1001.
//   - GET /submissions (Judge0: admins only) lists the tenant's own.
package judge0
