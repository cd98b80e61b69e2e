// User and group names as every other tool on the host sees them (NSS).
#pragma once

#include "broker/core/policy.h"

namespace portbroker::broker {

const NameResolver& system_name_resolver();

}  // namespace portbroker::broker
