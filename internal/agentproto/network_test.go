package agentproto

import (
	"errors"
	"testing"
)

func TestNetConfigParse(t *testing.T) {
	good := NetConfigRequest{MAC: "06:fe:00:00:00:01", Addr: "10.0.2.15/24", Gateway: "10.0.2.2", DNS: []string{"10.0.2.2"}, MTU: 1500}
	p, err := good.Parse()
	if err != nil || p.Addr.String() != "10.0.2.15/24" || p.Gateway.String() != "10.0.2.2" || len(p.DNS) != 1 {
		t.Fatalf("Parse(good) = %+v, %v", p, err)
	}
	for name, mut := range map[string]func(*NetConfigRequest){
		"multicast mac":      func(r *NetConfigRequest) { r.MAC = "01:00:5e:00:00:01" },
		"bad mac":            func(r *NetConfigRequest) { r.MAC = "zz" },
		"no prefix":          func(r *NetConfigRequest) { r.Addr = "10.0.2.15" },
		"ipv6":               func(r *NetConfigRequest) { r.Addr = "fd00::2/64" },
		"/32":                func(r *NetConfigRequest) { r.Addr = "10.0.2.15/32" },
		"gateway outside":    func(r *NetConfigRequest) { r.Gateway = "10.0.3.1" },
		"gateway is itself":  func(r *NetConfigRequest) { r.Gateway = "10.0.2.15" },
		"too many resolvers": func(r *NetConfigRequest) { r.DNS = []string{"1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4"} },
		"bad resolver":       func(r *NetConfigRequest) { r.DNS = []string{"nameserver 1.1.1.1"} },
		"mtu":                func(r *NetConfigRequest) { r.MTU = 100 },
	} {
		r := good
		r.DNS = append([]string(nil), good.DNS...)
		mut(&r)
		if _, err := r.Parse(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Parse = %v, want ErrMalformed", name, err)
		}
	}
}
