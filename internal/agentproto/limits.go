package agentproto

// Limits bound one exec. Zero values mean "the agent's default"; the agent
// also enforces its own maxima, so a host cannot lift them by accident.
type Limits struct {
	// WallMillis is the wall-clock limit; the process tree is killed at it.
	WallMillis int64 `json:"wall_ms,omitempty" toml:"wall_ms"`
	// OutputBytes caps each of stdout and stderr.
	OutputBytes int64 `json:"output_bytes,omitempty" toml:"output_bytes"`
	// Procs caps the number of tasks (processes and threads) alive at once.
	Procs int64 `json:"procs,omitempty" toml:"procs"`
	// MemoryBytes caps the memory of the process tree.
	MemoryBytes int64 `json:"memory_bytes,omitempty" toml:"memory_bytes"`
}

// DefaultLimits are used for fields a request leaves zero.
var DefaultLimits = Limits{
	WallMillis:  15_000,
	OutputBytes: 1 << 20,
	Procs:       64,
	MemoryBytes: 256 << 20,
}

// MaxLimits are the most a request may ask for.
var MaxLimits = Limits{
	WallMillis:  3_600_000,
	OutputBytes: 64 << 20,
	Procs:       4096,
	MemoryBytes: 64 << 30,
}

// Effective fills l's zero fields from def and clamps every field to max
// (a zero field of max clamps nothing). Agent and host both use it, so the
// host knows the cap the agent applies, and enforces it too.
func (l Limits) Effective(def, max Limits) Limits {
	pick := func(v, d, m int64) int64 {
		if v == 0 {
			v = d
		}
		if m > 0 && v > m {
			v = m
		}
		return v
	}
	return Limits{
		WallMillis:  pick(l.WallMillis, def.WallMillis, max.WallMillis),
		OutputBytes: pick(l.OutputBytes, def.OutputBytes, max.OutputBytes),
		Procs:       pick(l.Procs, def.Procs, max.Procs),
		MemoryBytes: pick(l.MemoryBytes, def.MemoryBytes, max.MemoryBytes),
	}
}
