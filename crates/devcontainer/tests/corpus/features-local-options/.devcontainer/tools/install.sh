#!/bin/sh
echo $VERSION
