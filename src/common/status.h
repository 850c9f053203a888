#pragma once
// Status and Result<T> live in the public include/iris/status.h (the client library's
// installed headers use them too); server code keeps including this name.
#include "iris/status.h"
