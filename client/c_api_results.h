// The C ABI's result objects: what the opaque types of portbroker.h are. Each keeps the C++
// values it wraps plus the strings its accessors hand out, so a borrowed `const char*` stays
// valid for the object's lifetime.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "portbroker/client.hpp"
#include "portbroker/info.hpp"
#include "portbroker/portbroker.h"

struct portbroker_lease {
  explicit portbroker_lease(portbroker::LeaseInfo l)
      : info(std::move(l)), address(info.address.to_string()) {}
  portbroker::LeaseInfo info;
  std::string address;
};

struct portbroker_lease_list {
  explicit portbroker_lease_list(std::vector<portbroker::LeaseInfo> leases);
  std::vector<portbroker_lease> leases;
};

struct portbroker_status_info {
  portbroker::DaemonStatus status;
};

struct portbroker_reservation {
  explicit portbroker_reservation(portbroker::ReservationInfo r);
  portbroker::ReservationInfo info;
  std::string address;  // "" for any address
};

struct portbroker_reservation_list {
  explicit portbroker_reservation_list(std::vector<portbroker::ReservationInfo> reservations);
  std::vector<portbroker_reservation> reservations;
};

struct portbroker_outside_holder {
  explicit portbroker_outside_holder(portbroker::OutsideHolder o)
      : info(std::move(o)), address(info.address.to_string()) {}
  portbroker::OutsideHolder info;
  std::string address;
};

struct portbroker_who_report {
  explicit portbroker_who_report(portbroker::WhoReport w);
  portbroker::WhoReport report;
  portbroker_lease_list leases;
  std::vector<portbroker_outside_holder> outside;
  portbroker_reservation_list reservations;
};

struct portbroker_problem_list {
  std::vector<portbroker::Problem> problems;
};

struct portbroker_reload_report {
  portbroker::ReloadReport report;
};

struct portbroker_event {
  portbroker::Event event;
};

struct portbroker_event_stream {
  explicit portbroker_event_stream(portbroker::EventStream s) : stream(std::move(s)) {}
  portbroker::EventStream stream;
  std::string last_error;
};
