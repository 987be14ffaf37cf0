// A step-ca binary from Debian's Go sources of smallstep/certificates (package
// golang-github-smallstep-certificates-dev, 0.19.0): the same entry point as upstream's
// cmd/step-ca (the "start" action and its flags), with the software KMS and CAS it needs to
// read a key file. Built by scripts/install-tools.sh for the labs; never deployed.
package main

import (
	"fmt"
	"os"

	"github.com/smallstep/certificates/commands"
	"github.com/urfave/cli"

	_ "github.com/smallstep/certificates/cas/softcas"
	_ "github.com/smallstep/certificates/kms/softkms"
)

// version is set at build time (-ldflags "-X main.version=..."): the Debian package's version.
var version = "unknown"

func main() {
	app := cli.NewApp()
	app.Name = "step-ca"
	app.Usage = "an online certificate authority (built from Debian's golang-github-smallstep-certificates-dev)"
	app.Version = version
	app.Action = commands.AppCommand.Action
	app.Flags = commands.AppCommand.Flags
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
