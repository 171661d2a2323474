#!/bin/sh
# component 3: the AWS hello-world sample (examples/golden-nginx/components/aws-hello-world.yaml;
# the third RUN of bench/golden-nginx/Containerfile).
echo "hello world" > ~/helloworld.txt && test -f ~/helloworld.txt && echo 'Hello world echo file created'
