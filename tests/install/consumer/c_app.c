#include <portbroker/portbroker.h>
#include <stdio.h>

int main(int argc, char **argv) {
  portbroker_client *c = NULL;
  int rc = portbroker_connect(argc > 1 ? argv[1] : NULL, &c);
  printf("%d %s\n", rc, rc < 0 ? portbroker_last_error(NULL) : "connected");
  if (c != NULL) portbroker_close(c);
  return 0;
}
