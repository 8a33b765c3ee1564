// Package image holds the language catalog and builds and stores the root
// filesystem images guests boot from.
//
// An image is built once per content id (Entry.ID): debootstrap a Debian
// minbase with the language's packages into a temporary directory, add the
// unprivileged "sandbox" user, strip caches and logs, pack it read-only
// (SquashFS with zstd by default), and rename the finished directory into
// <data>/images/<id>/ with a manifest. Building an id that exists is a
// no-op; an interrupted build leaves only a .build-* directory that the
// next build sweeps.
package image
