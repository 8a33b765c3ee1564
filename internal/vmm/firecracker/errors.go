package firecracker

import "fmt"

// APIError is a request Firecracker refused; FaultMessage is its own
// explanation. The driver's other errors wrap the vmm package's
// sentinels (ErrInvalidConfig, ErrExited, ErrIncompatible, ErrInUse...).
type APIError struct {
	Method, Path string
	Status       int
	FaultMessage string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("firecracker %s %s: %d %s", e.Method, e.Path, e.Status, e.FaultMessage)
}
