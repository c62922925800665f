/* server: `orp-runtime serve`, the OpenAI-compatible HTTP front of one loaded model. */
#ifndef ORP_RT_SERVER_H
#define ORP_RT_SERVER_H

/* Parses argv[first..] as serve's options, loads the model in the background, serves until
 * SIGINT or SIGTERM. Returns the process exit status (0; 1 when the model cannot be loaded; 2 on
 * a bad command line). */
int rt_serve(int argc, char **argv, int first);

#endif
