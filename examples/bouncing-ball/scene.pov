// hpcdock example: a striped ball bouncing around a checkered floor.
// The motion depends only on frame_number and repeats every 48 frames, so any frame
// range renders the same pictures and 1-48 loops seamlessly.
// Render (what render.sh does):  povray +Iscene.pov +W640 +H360 +A0.3 -D +KFI1 +KFF48 +SF7 +EF7

#version 3.7;
global_settings { assumed_gamma 1.0 max_trace_level 5 }

#declare Period = 48;                                  // frames per loop
#declare T = mod(frame_number + Period - 1, Period) / Period;  // 0 .. <1 over the loop
#declare Bounces = 4;                                  // bounces per loop
#declare R = 0.5;                                      // ball radius
#declare Path = 1.8;                                   // radius of the ball's circular path
#declare Height = 1.6;                                 // bounce height

// Bounce: |sin| gives a parabola-like hop with a sharp floor contact.
#declare Hop = abs(sin(pi * Bounces * T));
#declare Squash = 1 - 0.22 * pow(1 - Hop, 8);          // flattens only near the floor
#declare Angle = 360 * T;                              // position on the path, degrees
#declare Centre = vrotate(<Path, 0, 0>, <0, -Angle, 0>);

// Camera: swings slowly left and right and rises a little, once per loop.
#declare CamAngle = 25 * sin(2 * pi * T);
camera {
  location vrotate(<0, 2.6 + 0.5 * sin(2 * pi * T), -6.8>, <0, CamAngle, 0>)
  look_at <0, 0.95, 0>
  right x * 16 / 9
  angle 50
}

// Light: one soft key light and a dim fill without shadows.
light_source {
  <-4, 7, -3>, rgb <1.0, 0.96, 0.9> * 1.1
  area_light <1.5, 0, 0>, <0, 0, 1.5>, 4, 4
  adaptive 0
  circular orient
}
light_source { <5, 4, -6>, rgb <0.55, 0.6, 0.7> * 0.35 shadowless }

sky_sphere {
  pigment {
    gradient y
    color_map { [0 rgb <0.85, 0.9, 1.0>] [0.35 rgb <0.25, 0.45, 0.85>] [1 rgb <0.1, 0.2, 0.55>] }
  }
}

// Haze fades the far checkers (and their moire) into the sky.
fog { fog_type 2 distance 40 fog_offset 0 fog_alt 0.5 rgb <0.78, 0.85, 0.98> }

// Checkered floor with a faint reflection.
plane {
  y, 0
  texture {
    pigment { checker rgb <0.9, 0.9, 0.88> rgb <0.12, 0.13, 0.16> scale 0.75 }
    finish { diffuse 0.8 ambient 0.03 specular 0.2 roughness 0.05 reflection { 0.12 } }
  }
}

// The ball: beach-ball stripes so its roll shows, squashed at each contact.
sphere {
  0, R
  texture {
    pigment {
      radial frequency 6
      color_map { [0.0 rgb <0.9, 0.1, 0.08>] [0.5 rgb <0.9, 0.1, 0.08>] [0.5 rgb <1, 0.95, 0.85>] [1.0 rgb <1, 0.95, 0.85>] }
      rotate 90 * x
    }
    finish { diffuse 0.7 ambient 0.03 phong 0.9 phong_size 80 reflection { 0.08 } }
  }
  // roll: the ball turns about the radial axis as it travels along the path
  rotate <0, 0, Angle * Path / R>
  rotate <0, -Angle, 0>
  scale <1 / sqrt(Squash), Squash, 1 / sqrt(Squash)>
  translate Centre + <0, R * Squash + Height * Hop, 0>
}

// Props that give the camera move some parallax.
#declare Metal = finish { diffuse 0.25 ambient 0.02 metallic reflection { 0.55 } phong 0.6 phong_size 60 }
sphere { <0, 0.55, 0>, 0.55 texture { pigment { rgb <1.0, 0.78, 0.4> } finish { Metal } } }
box { <-0.35, 0, -0.35>, <0.35, 0.7, 0.35> rotate 30 * y translate <-3.3, 0, 2.2>
      texture { pigment { rgb <0.2, 0.55, 0.85> } finish { diffuse 0.75 ambient 0.03 specular 0.3 } } }
cylinder { <3.4, 0, 2.0>, <3.4, 1.4, 2.0>, 0.3
      texture { pigment { rgb <0.3, 0.75, 0.35> } finish { diffuse 0.75 ambient 0.03 specular 0.3 } } }
