module github.com/mailbus/mailbus/cmd/mailbus

go 1.26.8

require github.com/mailbus/mailbus/pkg v0.0.0

require (
	github.com/emersion/go-sasl v0.0.0-20241020182733-b788ff22d5a6 // indirect
	github.com/emersion/go-smtp v0.25.1 // indirect
)

replace (
	github.com/mailbus/mailbus/pkg => ../../pkg
	github.com/mailbus/mailbus/services/bounce => ../../services/bounce
	github.com/mailbus/mailbus/services/config => ../../services/config
	github.com/mailbus/mailbus/services/quota => ../../services/quota
	github.com/mailbus/mailbus/services/router => ../../services/router
	github.com/mailbus/mailbus/services/sender => ../../services/sender
	github.com/mailbus/mailbus/services/signer => ../../services/signer
	github.com/mailbus/mailbus/services/tracker => ../../services/tracker
)
