package judge0

import "errors"

// Errors an Authenticate function returns to refuse a request; anything
// else it returns is treated as ErrUnauthenticated.
var (
	// ErrUnauthenticated is answered with 401 and no body, as Judge0
	// answers a missing or wrong X-Auth-Token.
	ErrUnauthenticated = errors.New("judge0: not authenticated")
	// ErrForbidden is answered with 403 and no body, as Judge0 answers a
	// missing or wrong X-Auth-User.
	ErrForbidden = errors.New("judge0: forbidden")
)

// ErrBadConfig means a Config or Deps cannot work.
var ErrBadConfig = errors.New("judge0: bad configuration")

// errNotUTF8 means a text attribute cannot be sent as JSON text: the
// client must ask for base64.
var errNotUTF8 = errors.New("not UTF-8")
