package vmm

// Diagnosis says whether a driver can run VMs on this host, and why not.
// It is plain data for `firesandbox doctor` to print; each driver's
// Diagnose fills it without booting anything.
type Diagnosis struct {
	Driver  string `json:"driver"`
	Usable  bool   `json:"usable"`
	Version string `json:"version,omitempty"`
	// Problems are reasons the driver cannot work here; each one says
	// what to fix. A driver with problems is not usable.
	Problems []string `json:"problems,omitempty"`
	// Warnings are weaknesses that do not stop the driver, such as a
	// confinement switched off or software emulation.
	Warnings []string `json:"warnings,omitempty"`
	// Notes are facts worth knowing.
	Notes []string `json:"notes,omitempty"`
}

// Problem records a reason the driver cannot work.
func (d *Diagnosis) Problem(s string) { d.Problems = append(d.Problems, s) }

// Warn records a weakness that does not stop the driver.
func (d *Diagnosis) Warn(s string) { d.Warnings = append(d.Warnings, s) }

// Note records a fact.
func (d *Diagnosis) Note(s string) { d.Notes = append(d.Notes, s) }
