// Package image holds the language catalog and builds and stores the root
// filesystem images guests boot from.
//
// The catalog (languages/*.toml) has one entry per language version:
// <name>.toml is the default, <name>@<label>.toml a further version that
// Catalog.Lookup and Catalog.Match pick by Piston's version selector. An
// entry also says the VM it needs (Entry.Shape), its limits on KVM
// (Entry.StepLimits scales them for slower accelerators, see Slowdown),
// and its conformance programs (Checks).
//
// An image is built once per content id (Entry.ID). For Debian entries:
// debootstrap a minbase of the entry's release (bookworm unless its suite
// names trixie) as a shared base layer with the unprivileged "sandbox"
// user, then install the language into an overlay over it: apt packages
// (from a backports suite with -t if the entry names one), npm packages
// (with npm, into /usr/local), then the entry's setup commands in a
// chroot; only the overlay's upper directory, whiteouts included, becomes
// the language's layer. For an entry that names an OCI image, the image's
// layers are pulled (go-containerregistry), flattened with their
// whiteouts and opaque directories, and become a layer of their own.
// Layers are packed read-only (SquashFS with zstd by default) and renamed
// into <data>/images/<id>/ with a manifest. Building an id that exists is
// a no-op; an interrupted build leaves only a .build-* directory that the
// next build sweeps.
package image
