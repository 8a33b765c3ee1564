package fctest

import "encoding/json"

// The request bodies, as Firecracker's current API defines them. The fake
// decodes with unknown fields disallowed, like Firecracker's serde
// structs; pointers tell a missing field from a zero one.

// MachineConfig is PUT /machine-config.
type MachineConfig struct {
	VcpuCount       *int64  `json:"vcpu_count"`
	MemSizeMib      *int64  `json:"mem_size_mib"`
	Smt             *bool   `json:"smt,omitempty"`
	CPUTemplate     *string `json:"cpu_template,omitempty"`
	TrackDirtyPages *bool   `json:"track_dirty_pages,omitempty"`
	HugePages       *string `json:"huge_pages,omitempty"`
}

// BootSource is PUT /boot-source.
type BootSource struct {
	KernelImagePath *string `json:"kernel_image_path"`
	InitrdPath      *string `json:"initrd_path,omitempty"`
	BootArgs        *string `json:"boot_args,omitempty"`
}

// Drive is PUT /drives/{id}.
type Drive struct {
	DriveID      *string         `json:"drive_id"`
	PathOnHost   *string         `json:"path_on_host,omitempty"`
	IsRootDevice *bool           `json:"is_root_device"`
	IsReadOnly   *bool           `json:"is_read_only,omitempty"`
	Partuuid     *string         `json:"partuuid,omitempty"`
	CacheType    *string         `json:"cache_type,omitempty"`
	IoEngine     *string         `json:"io_engine,omitempty"`
	RateLimiter  json.RawMessage `json:"rate_limiter,omitempty"`
	Socket       *string         `json:"socket,omitempty"`
}

// NetworkInterface is PUT /network-interfaces/{id}.
type NetworkInterface struct {
	IfaceID       *string         `json:"iface_id"`
	HostDevName   *string         `json:"host_dev_name"`
	GuestMac      *string         `json:"guest_mac,omitempty"`
	RxRateLimiter json.RawMessage `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter json.RawMessage `json:"tx_rate_limiter,omitempty"`
}

// Vsock is PUT /vsock.
type Vsock struct {
	GuestCid *int64  `json:"guest_cid"`
	UdsPath  *string `json:"uds_path"`
	VsockID  *string `json:"vsock_id,omitempty"`
}

type logger struct {
	Level         *string `json:"level,omitempty"`
	LogPath       *string `json:"log_path,omitempty"`
	ShowLevel     *bool   `json:"show_level,omitempty"`
	ShowLogOrigin *bool   `json:"show_log_origin,omitempty"`
	Module        *string `json:"module,omitempty"`
}

type serialDevice struct {
	SerialOutPath *string         `json:"serial_out_path,omitempty"`
	RateLimiter   json.RawMessage `json:"rate_limiter,omitempty"`
}

type action struct {
	ActionType *string `json:"action_type"`
}

type vmState struct {
	State *string `json:"state"`
}

type snapshotCreate struct {
	SnapshotType *string `json:"snapshot_type,omitempty"`
	SnapshotPath *string `json:"snapshot_path"`
	MemFilePath  *string `json:"mem_file_path"`
	Version      *string `json:"version,omitempty"` // accepted by older releases only
}

type memBackend struct {
	BackendType *string `json:"backend_type"`
	BackendPath *string `json:"backend_path"`
}

type snapshotLoad struct {
	SnapshotPath        *string         `json:"snapshot_path"`
	MemFilePath         *string         `json:"mem_file_path,omitempty"`
	MemBackend          *memBackend     `json:"mem_backend,omitempty"`
	EnableDiffSnapshots *bool           `json:"enable_diff_snapshots,omitempty"`
	TrackDirtyPages     *bool           `json:"track_dirty_pages,omitempty"`
	ResumeVM            *bool           `json:"resume_vm,omitempty"`
	NetworkOverrides    json.RawMessage `json:"network_overrides,omitempty"`
	VsockOverride       *struct {
		UdsPath *string `json:"uds_path"`
	} `json:"vsock_override,omitempty"`
	ClockRealtime *bool `json:"clock_realtime,omitempty"`
}

// savedState is what the fake writes as a vmstate file: enough of the
// configuration to rebuild the instance, as Firecracker's device state is.
type savedState struct {
	Magic   string        `json:"magic"`
	Version string        `json:"version"`
	Machine MachineConfig `json:"machine"`
	Boot    BootSource    `json:"boot"`
	Drives  []Drive       `json:"drives"`
	Vsock   *Vsock        `json:"vsock,omitempty"`
	// Net are the network interfaces: a load opens their taps again, by
	// name, in the loading process's namespace.
	Net []NetworkInterface `json:"net,omitempty"`
}
